"""The balance and credit view: a pure fold of one customer's invoices, payments, purchases,
refunds and credit terms, kept per currency (money never converts).

Rules, per currency:
- A payment naming a known open invoice of its currency settles it; any excess is credit on
  account. A payment naming an invoice not seen yet is held for it: counted in `paid` at once and
  applied to the invoice when it arrives (all of it goes to credit if that invoice is in another
  currency). A payment without invoice_id, or naming a settled invoice or one in another
  currency, is credit on account.
- A refund of a known order (a purchase.made with that order_id in the refund's currency) counts
  in `refunded` and becomes credit on account. A refund of an order not seen yet is held, and
  counts nowhere, until the order arrives.
- Credit on account settles the open invoices of its currency oldest first (due date, then issue
  order) as soon as both exist, so credit stays positive only while nothing is open.
- A repeated invoice_id or payment_id (a document sent again under a new event_id; the recorder
  already drops a repeated event_id) is ignored: the first one wins. Refunds carry no id and
  each one counts.
- Every currency named by one of these events, credit terms included, gets a ledger (zeros
  until money moves). The last credit.terms.set wins.

So outstanding = invoiced - paid - refunded = open invoices' outstanding - credit - held payments;
negative means the customer is in credit.

`to_json` writes the state the read model stores as JSONB (`report` writes what the API shows):

    {"customer_id": "C-1", "version": 7, "position": 1234,
     "ledgers": {"EUR": {"invoiced": "300.00", "paid": "120.00", "refunded": "0", "credit": "0",
                         "open_invoices": [{"invoice_id": "INV-1", "amount": "100.00",
                                            "paid": "20.00", "due_date": "2026-02-04",
                                            "issued_version": 3}],
                         "held_payments": {"INV-9": "10.00"}, "held_refunds": {"O-3": "5.00"},
                         "orders": ["O-1"]}},
     "settled_invoice_ids": ["INV-0"], "payment_ids": ["P-1", "P-2"],
     "credit_terms": {"limit": "5000", "currency": "EUR", "payment_terms_days": 30} | null,
     "credit_exceeded_since": 5 | null}

"credit_exceeded_since" is the version of the event that started the current credit-limit
excess (the episode of the credit alert); null while within the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from projections.alerts import CREDIT_LIMIT_EXCEEDED, INVOICE_OVERDUE, Alert, alert_id
from projections.recorded import RecordedEvent, is_next
from projections.views import CustomerView

ZERO = Decimal(0)
AGING_BUCKETS = ("current", "1-30", "31-60", "61-90", "90+")
CREDIT_ACTION = "Put new orders on hold and call the customer about payment."
OVERDUE_ACTION = "Send a payment reminder and call the customer if the invoice stays unpaid."

Payload = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Invoice:
    """An open invoice; `issued_version` (the customer version of its invoice.issued) orders
    invoices due the same day."""

    invoice_id: str
    amount: Decimal
    due_date: date
    issued_version: int
    paid: Decimal = ZERO

    @property
    def outstanding(self) -> Decimal:
        return self.amount - self.paid

    def days_overdue(self, as_of: date) -> int:
        return (as_of - self.due_date).days


@dataclass(frozen=True, slots=True)
class Ledger:
    """One currency. `credit` is money on account not yet spent on an invoice; held payments are
    keyed by the invoice_id they name, held refunds by order_id. Dicts are never mutated."""

    invoiced: Decimal = ZERO
    paid: Decimal = ZERO
    refunded: Decimal = ZERO
    credit: Decimal = ZERO
    open_invoices: dict[str, Invoice] = field(default_factory=dict)
    held_payments: dict[str, Decimal] = field(default_factory=dict)
    held_refunds: dict[str, Decimal] = field(default_factory=dict)
    orders: frozenset[str] = frozenset()

    @property
    def outstanding(self) -> Decimal:
        return self.invoiced - self.paid - self.refunded


@dataclass(frozen=True, slots=True)
class CreditTerms:
    limit: Decimal
    currency: str
    payment_terms_days: int


@dataclass(frozen=True, slots=True)
class Balance:
    """The view of one customer after `version` (at global `position`); version 0 is empty."""

    customer_id: str
    version: int = 0
    position: int = 0
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    settled_invoice_ids: frozenset[str] = frozenset()
    payment_ids: frozenset[str] = frozenset()
    terms: CreditTerms | None = None
    credit_exceeded_since: int | None = None

    def ledger(self, currency: str) -> Ledger:
        return self.ledgers.get(currency, Ledger())

    def knows_invoice(self, invoice_id: str) -> bool:
        return invoice_id in self.settled_invoice_ids or any(
            invoice_id in ledger.open_invoices for ledger in self.ledgers.values()
        )


class OverdueInvoice(NamedTuple):
    invoice_id: str
    due_date: date
    outstanding: Decimal
    currency: str


def apply(state: Balance | None, event: RecordedEvent) -> Balance:
    """The state after `event`; unchanged if already applied, VersionGap if versions are missing."""
    envelope = event.envelope
    if state is None:
        state = Balance(envelope.customer_id)
    if not is_next(state.customer_id, state.version, event):
        return state
    effect = _EFFECTS.get(envelope.type)
    moved = state if effect is None else effect(state, envelope.payload, event.version)
    # the episode is the version that started the current credit excess, kept while it lasts
    since = state.credit_exceeded_since
    episode = (event.version if since is None else since) if credit_exceeded(moved) else None
    return replace(
        moved, version=event.version, position=event.position, credit_exceeded_since=episode
    )


def fold(events: Iterable[RecordedEvent], state: Balance | None = None) -> Balance | None:
    """Apply `events` of one customer in order to `state` (None: no event yet)."""
    for event in events:
        state = apply(state, event)
    return state


# --- effects by type ----------------------------------------------------------------------


def _invoice_issued(state: Balance, p: Payload, version: int) -> Balance:
    invoice_id, currency = p["invoice_id"], p["currency"]
    if state.knows_invoice(invoice_id):
        return state
    invoice = Invoice(invoice_id, Decimal(p["amount"]), date.fromisoformat(p["due_date"]), version)
    ledger = state.ledger(currency)
    ledgers = state.ledgers | {
        currency: replace(
            ledger,
            invoiced=ledger.invoiced + invoice.amount,
            open_invoices=ledger.open_invoices | {invoice_id: invoice},
        )
    }
    for held_currency, held_ledger in list(ledgers.items()):
        held = held_ledger.held_payments.get(invoice_id)
        if held is not None:
            rest = _without(held_ledger.held_payments, invoice_id)
            released = replace(held_ledger, held_payments=rest)
            if held_currency == currency:
                released, held = _pay_invoice(released, invoice_id, held)
            ledgers[held_currency] = replace(released, credit=released.credit + held)
    return _settled(replace(state, ledgers=ledgers))


def _payment_received(state: Balance, p: Payload, version: int) -> Balance:
    payment_id, currency, amount = p["payment_id"], p["currency"], Decimal(p["amount"])
    if payment_id in state.payment_ids:
        return state
    invoice_id: str | None = p.get("invoice_id")
    ledger = state.ledger(currency)
    ledger = replace(ledger, paid=ledger.paid + amount)
    if invoice_id is not None and not state.knows_invoice(invoice_id):
        ledger = replace(ledger, held_payments=_plus(ledger.held_payments, invoice_id, amount))
    else:
        if invoice_id in ledger.open_invoices:
            ledger, amount = _pay_invoice(ledger, invoice_id, amount)
        ledger = replace(ledger, credit=ledger.credit + amount)
    return _settled(
        replace(
            state,
            ledgers=state.ledgers | {currency: ledger},
            payment_ids=state.payment_ids | {payment_id},
        )
    )


def _purchase_made(state: Balance, p: Payload, version: int) -> Balance:
    order_id, currency = p["order_id"], p["currency"]
    ledger = state.ledger(currency)
    held = ledger.held_refunds.get(order_id, ZERO)
    ledger = replace(
        ledger,
        orders=ledger.orders | {order_id},
        held_refunds=_without(ledger.held_refunds, order_id),
        refunded=ledger.refunded + held,
        credit=ledger.credit + held,
    )
    return _settled(replace(state, ledgers=state.ledgers | {currency: ledger}))


def _purchase_refunded(state: Balance, p: Payload, version: int) -> Balance:
    order_id, currency, amount = p["order_id"], p["currency"], Decimal(p["amount"])
    ledger = state.ledger(currency)
    if order_id in ledger.orders:
        ledger = replace(ledger, refunded=ledger.refunded + amount, credit=ledger.credit + amount)
    else:
        ledger = replace(ledger, held_refunds=_plus(ledger.held_refunds, order_id, amount))
    return _settled(replace(state, ledgers=state.ledgers | {currency: ledger}))


def _credit_terms_set(state: Balance, p: Payload, version: int) -> Balance:
    terms = CreditTerms(Decimal(p["credit_limit"]), p["currency"], p["payment_terms_days"])
    ledgers = state.ledgers | {terms.currency: state.ledger(terms.currency)}
    return replace(state, terms=terms, ledgers=ledgers)


_EFFECTS: dict[str, Callable[[Balance, Payload, int], Balance]] = {
    "invoice.issued": _invoice_issued,
    "payment.received": _payment_received,
    "purchase.made": _purchase_made,
    "purchase.refunded": _purchase_refunded,
    "credit.terms.set": _credit_terms_set,
}


def _pay_invoice(ledger: Ledger, invoice_id: str, amount: Decimal) -> tuple[Ledger, Decimal]:
    """`ledger` with up to `amount` paid on its open invoice `invoice_id`, and what is left."""
    invoice = ledger.open_invoices[invoice_id]
    take = min(amount, invoice.outstanding)
    paid = replace(invoice, paid=invoice.paid + take)
    return replace(ledger, open_invoices=ledger.open_invoices | {invoice_id: paid}), amount - take


def _settled(state: Balance) -> Balance:
    """Spend each currency's credit on its open invoices, oldest first; retire paid invoices."""
    ledgers: dict[str, Ledger] = {}
    closed: set[str] = set()
    for currency, ledger in state.ledgers.items():
        credit, still_open = ledger.credit, {}
        for invoice in sorted(ledger.open_invoices.values(), key=_age):
            if credit > 0:
                take = min(credit, invoice.outstanding)
                credit -= take
                invoice = replace(invoice, paid=invoice.paid + take)
            if invoice.outstanding > 0:
                still_open[invoice.invoice_id] = invoice
            else:
                closed.add(invoice.invoice_id)
        ledgers[currency] = replace(ledger, credit=credit, open_invoices=still_open)
    return replace(state, ledgers=ledgers, settled_invoice_ids=state.settled_invoice_ids | closed)


# --- what the API and the alerts read -------------------------------------------------------


def aging_bucket(days_overdue: int) -> str:
    """The aging bucket of an invoice `days_overdue` past due: "current" up to the due date,
    then "1-30", "31-60", "61-90" and "90+" days past it."""
    if days_overdue <= 0:
        return "current"
    for bucket, last_day in (("1-30", 30), ("31-60", 60), ("61-90", 90)):
        if days_overdue <= last_day:
            return bucket
    return "90+"


def open_invoices(state: Balance) -> list[tuple[str, Invoice]]:
    """(currency, invoice) of every open invoice, oldest due first, then in issue order."""
    found = [(c, i) for c, ledger in state.ledgers.items() for i in ledger.open_invoices.values()]
    return sorted(found, key=lambda pair: _age(pair[1]))


def available_credit(state: Balance) -> Decimal | None:
    """The limit minus what is outstanding in its currency (negative once exceeded; above the
    limit while the customer is in credit); None without credit terms."""
    if state.terms is None:
        return None
    return state.terms.limit - state.ledger(state.terms.currency).outstanding


def credit_exceeded(state: Balance) -> bool:
    """Whether what is outstanding in the credit currency is above the limit."""
    available = available_credit(state)
    return available is not None and available < 0


def overdue_invoices(state: Balance, as_of: date) -> list[OverdueInvoice]:
    """Open invoices past their due date on `as_of`, oldest due first."""
    return [
        OverdueInvoice(invoice.invoice_id, invoice.due_date, invoice.outstanding, currency)
        for currency, invoice in open_invoices(state)
        if invoice.days_overdue(as_of) >= 1
    ]


def report(state: Balance, as_of: date) -> dict[str, Any]:
    """The API document of the balance on `as_of`.

    "credit" has null values while no terms were set. Each open invoice also names its currency
    (a customer may owe in several)."""
    balances: dict[str, Any] = {}
    for currency, ledger in sorted(state.ledgers.items()):
        aging = dict.fromkeys(AGING_BUCKETS, ZERO)
        for invoice in ledger.open_invoices.values():
            aging[aging_bucket(invoice.days_overdue(as_of))] += invoice.outstanding
        overdue = sum((v for k, v in aging.items() if k != "current"), ZERO)
        balances[currency] = {
            "invoiced": _text(ledger.invoiced),
            "paid": _text(ledger.paid),
            "refunded": _text(ledger.refunded),
            "outstanding": _text(ledger.outstanding),
            "overdue": _text(overdue),
            "aging": {bucket: _text(amount) for bucket, amount in aging.items()},
        }
    terms, available = state.terms, available_credit(state)
    return {
        "customer_id": state.customer_id,
        "balances": balances,
        "credit": {
            "limit": None if terms is None else _text(terms.limit),
            "currency": None if terms is None else terms.currency,
            "available": None if available is None else _text(available),
            "payment_terms_days": None if terms is None else terms.payment_terms_days,
        },
        "open_invoices": [
            {
                "invoice_id": invoice.invoice_id,
                "currency": currency,
                "amount": _text(invoice.amount),
                "paid": _text(invoice.paid),
                "outstanding": _text(invoice.outstanding),
                "due_date": invoice.due_date.isoformat(),
                "days_overdue": invoice.days_overdue(as_of),
            }
            for currency, invoice in open_invoices(state)
        ],
        "as_of": as_of.isoformat(),
    }


def summary(state: Balance, as_of: date) -> dict[str, Any]:
    """The balance part of the customer 360."""
    full = report(state, as_of)
    balances, credit = full["balances"], full["credit"]
    return {
        "outstanding": {c: b["outstanding"] for c, b in balances.items()},
        "overdue": {c: b["overdue"] for c, b in balances.items()},
        "credit_limit": credit["limit"],
        "available_credit": credit["available"],
        "currency": credit["currency"],
    }


def combined_summary(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The `summary` of a survivor (first) and of the customers merged into it: outstanding and
    overdue added up per currency; the survivor's credit terms, its available credit taken
    against the combined outstanding in the credit currency."""
    first = parts[0]
    outstanding, overdue = (
        {c: _text(sum((Decimal(p[key].get(c, "0")) for p in parts), ZERO))
         for c in sorted({c for p in parts for c in p[key]})}
        for key in ("outstanding", "overdue")
    )  # fmt: skip
    limit, currency = first["credit_limit"], first["currency"]
    available = (
        None if limit is None else _text(Decimal(limit) - Decimal(outstanding.get(currency, "0")))
    )
    return {"outstanding": outstanding, "overdue": overdue, "credit_limit": limit,
            "available_credit": available, "currency": currency}  # fmt: skip


# --- alerts -------------------------------------------------------------------------------


def credit_limit_exceeded(
    state: Balance, raised_at: datetime, episode_key: str | None = None
) -> Alert:
    """The credit alert of `state`'s current episode (key: the version that started it)."""
    if state.terms is None or (state.credit_exceeded_since is None and episode_key is None):
        raise ValueError(f"customer {state.customer_id} is within its credit limit")
    currency = state.terms.currency
    details = {
        "outstanding": _text(state.ledger(currency).outstanding),
        "limit": _text(state.terms.limit),
        "currency": currency,
    }
    key = str(state.credit_exceeded_since) if episode_key is None else episode_key
    return Alert.for_episode(
        CREDIT_LIMIT_EXCEEDED, state.customer_id, key, raised_at, details, CREDIT_ACTION
    )


def invoice_overdue(
    customer_id: str, currency: str, invoice: Invoice, as_of: date, raised_at: datetime
) -> Alert:
    """The overdue alert of one invoice; its episode is the invoice, whatever the day."""
    details = {
        "invoice_id": invoice.invoice_id,
        "amount": _text(invoice.amount),
        "outstanding": _text(invoice.outstanding),
        "currency": currency,
        "due_date": invoice.due_date.isoformat(),
        "days_overdue": invoice.days_overdue(as_of),
    }
    return Alert.for_episode(
        INVOICE_OVERDUE, customer_id, invoice.invoice_id, raised_at, details, OVERDUE_ACTION
    )


def overdue_alerts(state: Balance, as_of: date, raised_at: datetime) -> list[Alert]:
    """One alert per open invoice past due on `as_of`, oldest due first."""
    return [
        invoice_overdue(state.customer_id, currency, invoice, as_of, raised_at)
        for currency, invoice in open_invoices(state)
        if invoice.days_overdue(as_of) >= 1
    ]


def alerts_between(before: Balance | None, after: Balance, raised_at: datetime) -> list[Alert]:
    """The credit alert if one event, changing `before` into `after`, starts a new credit-limit
    episode. Overdue invoices are found by the daily scan, never here: an invoice of a history
    being caught up looks overdue until the payments recorded after it are applied."""
    since = after.credit_exceeded_since
    if since is None or (before is not None and before.credit_exceeded_since == since):
        return []
    return [credit_limit_exceeded(after, raised_at)]


def ended_between(before: Balance | None, after: Balance) -> list[str]:
    """The alert ids of the episodes one event ended: the credit excess it brought back within
    the limit, and the invoices it settled (their overdue alert, if one was raised)."""
    if before is None:
        return []
    ended = []
    since = before.credit_exceeded_since
    if since is not None and after.credit_exceeded_since != since:
        ended.append(alert_id(CREDIT_LIMIT_EXCEEDED, after.customer_id, str(since)))
    if after.settled_invoice_ids is not before.settled_invoice_ids:
        settled = sorted(after.settled_invoice_ids - before.settled_invoice_ids)
        ended += [alert_id(INVOICE_OVERDUE, after.customer_id, i) for i in settled]
    return ended


# --- JSON ---------------------------------------------------------------------------------


def to_json(state: Balance) -> dict[str, Any]:
    """The JSON-ready document described in the module docstring."""
    terms = state.terms
    return {
        "customer_id": state.customer_id,
        "version": state.version,
        "position": state.position,
        "ledgers": {c: _ledger_json(ledger) for c, ledger in sorted(state.ledgers.items())},
        "settled_invoice_ids": sorted(state.settled_invoice_ids),
        "payment_ids": sorted(state.payment_ids),
        "credit_terms": None
        if terms is None
        else {
            "limit": _text(terms.limit),
            "currency": terms.currency,
            "payment_terms_days": terms.payment_terms_days,
        },
        "credit_exceeded_since": state.credit_exceeded_since,
    }


def from_json(doc: dict[str, Any]) -> Balance:
    """The state stored by `to_json`, ready to continue folding."""
    terms = doc["credit_terms"]
    return Balance(
        customer_id=doc["customer_id"],
        version=doc["version"],
        position=doc["position"],
        ledgers={c: _ledger(ledger) for c, ledger in doc["ledgers"].items()},
        settled_invoice_ids=frozenset(doc["settled_invoice_ids"]),
        payment_ids=frozenset(doc["payment_ids"]),
        terms=None
        if terms is None
        else CreditTerms(Decimal(terms["limit"]), terms["currency"], terms["payment_terms_days"]),
        credit_exceeded_since=doc["credit_exceeded_since"],
    )


BALANCE: CustomerView[Balance] = CustomerView(
    "balance", apply, to_json, from_json, alerts_between, ended_between
)
"""The read model for the projector: table rm_balance."""


def _ledger_json(ledger: Ledger) -> dict[str, Any]:
    return {
        "invoiced": _text(ledger.invoiced),
        "paid": _text(ledger.paid),
        "refunded": _text(ledger.refunded),
        "credit": _text(ledger.credit),
        "open_invoices": [
            {
                "invoice_id": i.invoice_id,
                "amount": _text(i.amount),
                "paid": _text(i.paid),
                "due_date": i.due_date.isoformat(),
                "issued_version": i.issued_version,
            }
            for i in sorted(ledger.open_invoices.values(), key=_age)
        ],
        "held_payments": {k: _text(v) for k, v in sorted(ledger.held_payments.items())},
        "held_refunds": {k: _text(v) for k, v in sorted(ledger.held_refunds.items())},
        "orders": sorted(ledger.orders),
    }


def _ledger(doc: dict[str, Any]) -> Ledger:
    invoices = (
        Invoice(
            i["invoice_id"],
            Decimal(i["amount"]),
            date.fromisoformat(i["due_date"]),
            i["issued_version"],
            Decimal(i["paid"]),
        )
        for i in doc["open_invoices"]
    )
    return Ledger(
        invoiced=Decimal(doc["invoiced"]),
        paid=Decimal(doc["paid"]),
        refunded=Decimal(doc["refunded"]),
        credit=Decimal(doc["credit"]),
        open_invoices={i.invoice_id: i for i in invoices},
        held_payments={k: Decimal(v) for k, v in doc["held_payments"].items()},
        held_refunds={k: Decimal(v) for k, v in doc["held_refunds"].items()},
        orders=frozenset(doc["orders"]),
    )


# --- helpers ------------------------------------------------------------------------------


def _age(invoice: Invoice) -> tuple[date, int]:
    return invoice.due_date, invoice.issued_version


def _plus(amounts: dict[str, Decimal], key: str, amount: Decimal) -> dict[str, Decimal]:
    return amounts | {key: amounts.get(key, ZERO) + amount}


def _without(amounts: dict[str, Decimal], key: str) -> dict[str, Decimal]:
    return {k: v for k, v in amounts.items() if k != key}


def _text(amount: Decimal) -> str:
    return f"{amount:f}"
