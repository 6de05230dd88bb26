"""One demo customer's history, simulated: registration, orders, invoices and payments,
refunds, complaints, calls, e-mails, web visits and follow-ups, each an event at its time."""

from __future__ import annotations

import calendar
import heapq
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from random import Random
from typing import TYPE_CHECKING, Any

from infra.demo.catalog import (
    _ANCHORS,
    _BUNDLE_WEIGHTS,
    _BY_SKU,
    _CENT,
    _EVERYDAY,
    _LOOSE,
    _SHOP,
    BUNDLES,
    PRODUCTS,
    Bundle,
    Product,
    _product_url,
)
from infra.demo.people import (
    _AGENTS,
    _COMPLAINTS,
    _COUNTRIES,
    _COUNTRIES_BY_CURRENCY,
    _INBOUND_CALLS,
    _NEWSLETTERS,
    _OUTBOUND_CALLS,
    _TRADES,
    _UTC_OFFSET_HOURS,
    _digits,
    _Profile,
    _slug,
)

if TYPE_CHECKING:
    from infra.demo.generator import _Period

_DAY = 86_400
_HOUR = 3_600


@dataclass(slots=True)
class _Order:
    order_id: str
    items: list[tuple[Product, int, Decimal]]  # product, quantity, unit price
    total: Decimal
    refundable: Decimal


_Activity = Callable[[Any], None]


class _Customer:
    """One customer's history: a heap of timed entries, each an event to emit or an activity
    that emits events and schedules more entries, never earlier than itself."""

    def __init__(self, index: int, profile: _Profile, rng: Random, period: _Period) -> None:
        self.index, self.p, self.rng, self.period = index, profile, rng, period
        self.heap: list[tuple[int, int, _Activity | None, Any]] = []
        self.now = period.start
        self.seq = 0
        self.counters: dict[str, int] = {}
        self.refills: dict[str, float] = {}  # sku -> personal interval in days
        self.spend = {"baseline": Decimal(0), "decline": Decimal(0)}
        self.terms = 14
        self.country = _COUNTRIES[rng.choice(_COUNTRIES_BY_CURRENCY.get(profile.currency, ("GB",)))]
        offset = _UTC_OFFSET_HOURS[profile.currency]
        lo, hi = (8, 18) if profile.business else (7, 22)
        self.hours = ((lo - offset) * _HOUR, (hi - offset) * _HOUR)
        self.online = 0.3 if profile.business else 0.75
        self.favorites = rng.sample(_EVERYDAY, 4)
        self.contact = self._contact()
        registered = period.start + int(profile.joined * (period.end - period.start))
        self.registered = registered if profile.joined == 0 else self._daytime(registered)
        self.at(self.registered, self._register)

    def events(self) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
        emitted = 0
        while self.heap:
            self.now, _, action, arg = heapq.heappop(self.heap)
            if action is not None:
                action(arg)
                continue
            emitted += 1
            type_, source, payload = arg
            envelope = {
                "event_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                "type": type_,
                "schema_version": 1,
                "customer_id": self.p.customer_id,
                "occurred_at": _rfc3339(self.now),
                "source": source,
                "payload": payload,
            }
            yield self.now, self.index, emitted, envelope

    # --- scheduling

    def at(self, ts: float, action: _Activity | None, arg: Any = None) -> None:
        ts = max(int(ts), self.now)
        if ts <= self.period.end:
            self.seq += 1
            heapq.heappush(self.heap, (ts, self.seq, action, arg))

    def emit(self, ts: float, type_: str, source: str, payload: dict[str, Any]) -> None:
        self.at(ts, None, (type_, source, payload))

    def _daytime(self, ts: float) -> int:
        return int(ts) // _DAY * _DAY + self.rng.randint(*self.hours)

    def later(self, days: float) -> int:
        """A moment of the customer's active hours, about `days` from now."""
        return max(self._daytime(self.now + days * _DAY), self.now + 60)

    def _repeat(self, per_month: float, activity: Callable[[], None], rhythm: float = 1) -> None:
        """Run `activity` from now on, `per_month` times a month on average, with gaps of gamma
        shape `rhythm`: 1 is a Poisson process, higher is more regular."""
        if per_month > 0:
            gap = self.rng.gammavariate(rhythm, 30 / per_month / rhythm)
            self.at(self.later(gap), self._occur, (per_month, activity, rhythm))

    def _occur(self, arg: tuple[float, Callable[[], None], float]) -> None:
        arg[1]()
        self._repeat(*arg)

    def _next_id(self, prefix: str) -> str:
        n = self.counters[prefix] = self.counters.get(prefix, 0) + 1
        return f"{prefix}-{self.index:06d}-{n:04d}"

    def _declining(self, ts: int) -> bool:
        return self.p.spend_factor < 1 and ts >= self.period.decline

    def _count(self, ts: int, amount: Decimal) -> None:
        if ts >= self.period.decline:
            self.spend["decline"] += amount
        elif ts >= self.period.baseline:
            self.spend["baseline"] += amount

    def _may_spend(self, ts: int, total: Decimal) -> bool:
        """False for most orders of a deserting customer in the last 4 months, and for any order
        that would lift their spend there above `spend_factor` of their usual monthly spend."""
        if self._declining(ts):
            months = self.period.baseline_months
            usual = self.spend["baseline"] / months if months else Decimal(0)
            cap = Decimal(str(self.p.spend_factor)) * usual * 4
            if self.rng.random() >= self.p.spend_factor or self.spend["decline"] + total > cap:
                return False
        self._count(ts, total)
        return True

    # --- who the customer is

    def _contact(self) -> dict[str, str]:
        rng, country = self.rng, self.country
        first, last = rng.choice(country.first_names), rng.choice(country.last_names)
        self.first, self.last = _slug(first), _slug(last)
        suffix = rng.choice(country.company_suffixes)
        self.company = f"{last} {rng.choice(_TRADES)} {suffix}" if self.p.business else ""
        contact = {"name": self.company or f"{first} {last}"}
        contact["email"] = self._mailbox()
        if rng.random() < 0.85:
            contact["phone"] = _digits(rng, rng.choice(country.phones))
        if rng.random() < 0.9:
            contact["address"] = self._address()
        return contact

    def _mailbox(self) -> str:
        rng, f, la = self.rng, self.first, self.last
        if self.p.business:
            domain = f"{la}-{_slug(self.company.split()[1])}.{self.country.tld}"
            return rng.choice((f"{f}.{la}", "purchasing", "info", f"{f[0]}{la}")) + "@" + domain
        year = rng.randint(60, 99)
        local = rng.choice((f"{f}.{la}", f"{f}{la}{year}", f"{f[0]}.{la}", f"{la}_{f}{year}"))
        return f"{local}@{rng.choice(self.country.mail_domains)}"

    def _address(self) -> str:
        pattern = self.rng.choice(self.country.addresses)
        return _digits(self.rng, pattern.replace("{n}", str(self.rng.randint(1, 180))))

    def _register(self, _: None) -> None:
        rng, segment = self.rng, self.p.segment
        source = "sales" if self.p.business or rng.random() < 0.4 else "web"
        self.emit(self.now, "customer.registered", source, dict(self.contact))
        if self.p.business:
            self.terms = rng.choice((30, 30, 45, 60))
            self._credit_terms(self.now + 60, rng.choice((5, 10, 25)) * 1000)
        self._repeat(segment.orders, self._shop, segment.rhythm)
        self._repeat(segment.browse, self._browse)
        self._repeat(segment.calls, self._call)
        self._repeat(0.15, self._question)
        self._repeat(0.05, self._update)
        if rng.random() < 0.7:
            self.at(self.later(rng.uniform(0, 30)), self._newsletter)
        if self.p.joined == 0:  # appliances bought before the period still need refills
            for bundle in BUNDLES:
                if rng.random() < 0.12:
                    self._subscribe(bundle, first_in=rng.uniform(0, 1))

    def _credit_terms(self, ts: int, limit: int) -> None:
        payload = {
            "credit_limit": str(limit),
            "currency": self.p.currency,
            "payment_terms_days": self.terms,
        }
        self.emit(ts, "credit.terms.set", "credit", payload)
        if self.rng.random() < 0.3:
            review = self.rng.uniform(90, 200) * _DAY
            self.at(ts + review, lambda _: self._credit_terms(self.now, limit * 2))

    def _update(self) -> None:
        rng = self.rng
        field = rng.choice(("email", "phone", "address"))
        if field == "email":
            value = self._mailbox()
        elif field == "phone":
            value = _digits(rng, rng.choice(self.country.phones))
        else:
            value = self._address()
        self.contact[field] = value
        self.emit(
            self.now, "customer.updated", rng.choice(("web", "support", "sales")), {field: value}
        )

    # --- buying

    def _basket(self) -> list[Product]:
        rng = self.rng
        if rng.random() >= self.p.segment.bundle:  # mostly what this customer usually buys
            skus = {rng.choice(self.favorites if rng.random() < 0.85 else _LOOSE)}
            skus |= {rng.choice(self.favorites) for _ in range(rng.choice((0, 0, 1, 2)))}
            return [_BY_SKU[sku] for sku in sorted(skus)]
        bundle = rng.choices(BUNDLES, _BUNDLE_WEIGHTS)[0]
        extras = [sku for sku, chance in bundle.extras if rng.random() < chance]
        return [_BY_SKU[sku] for sku in (rng.choice(bundle.anchors), *extras)]

    def _quantity(self, product: Product) -> int:
        rng, business = self.rng, self.p.business
        if product.sku in _ANCHORS:
            return rng.choice((1, 1, 2, 3)) if business else 1
        if product.refill_days:
            return rng.randint(2, 10) if business else rng.choice((1, 1, 2, 3))
        return rng.randint(1, 5) if business and rng.random() < 0.3 else 1

    def _shop(self, refill: Product | None = None) -> None:
        """Look at products on the web, and mostly buy them there or through sales."""
        rng = self.rng
        products = [refill] if refill else self._basket()
        online = rng.random() < (0.85 if refill else self.online)
        looked = online or rng.random() < 0.4
        visited = self._visit_pages([_product_url(p) for p in products[:3]]) if looked else 0
        ordered = visited + rng.randint(60, 600) if online else self.later(rng.uniform(0.5, 6))
        currency = self.p.currency
        items = [(p, self._quantity(p), p.price_in(currency)) for p in products]
        total = sum((q * price for _, q, price in items), Decimal(0))
        if self._may_spend(ordered, total):
            self.at(ordered, self._purchase, (items, total, "web" if online else "sales"))

    def _purchase(self, arg: tuple[list[tuple[Product, int, Decimal]], Decimal, str]) -> None:
        items, total, source = arg
        rng, now = self.rng, self.now
        order = _Order(self._next_id("O"), items, total, total)
        lines = [
            {"sku": p.sku, "name": p.name, "quantity": q, "unit_price": str(price)}
            for p, q, price in items
        ]
        payload = {"order_id": order.order_id, "items": lines, "total": str(total)}
        self.emit(now, "purchase.made", source, payload | {"currency": self.p.currency})
        subject = f"Your order {order.order_id}"
        self._email(now + rng.randint(30, 300), "outbound", subject, "sales")
        self._invoice(order)
        for product, _, _ in items:
            if product.sku in _ANCHORS:
                self._subscribe(_ANCHORS[product.sku], first_in=rng.uniform(0.8, 1.2))
        if rng.random() < 0.05:
            self.at(self.later(rng.uniform(1, 20)), self._complain, order)
        elif rng.random() < 0.03:
            product, quantity, price = rng.choice(items)
            self._refund(order, self.later(rng.uniform(3, 30)), quantity * price, "returned")

    def _subscribe(self, bundle: Bundle, first_in: float) -> None:
        """Start buying the bundle's consumables again and again, each at a personal interval."""
        for sku, _ in bundle.extras:
            product = _BY_SKU[sku]
            if product.refill_days and sku not in self.refills and self.rng.random() < 0.7:
                days = self.refills[sku] = product.refill_days * self.rng.uniform(0.75, 1.3)
                self.at(self.later(days * first_in), self._refill, product)

    def _refill(self, product: Product) -> None:
        self._shop(product)
        days = self.refills[product.sku] * self.rng.uniform(0.85, 1.15)
        self.at(self.later(days), self._refill, product)

    def _invoice(self, order: _Order) -> None:
        rng, currency = self.rng, self.p.currency
        issued = self.now + rng.randint(300, 2 * _HOUR)
        invoice_id = "INV" + order.order_id[1:]
        due = datetime.fromtimestamp(self.now, UTC).date() + timedelta(days=self.terms)
        payload = {"invoice_id": invoice_id, "amount": str(order.total), "currency": currency}
        self.emit(issued, "invoice.issued", "accounting", payload | {"due_date": due.isoformat()})
        due_ts = _timestamp(due) + 17 * _HOUR
        on_time = issued + 60 + rng.random() ** 2 * (due_ts - issued)
        late = due_ts + rng.uniform(1, 45) * _DAY
        chance = rng.random()
        if chance < 0.8:
            self._payment(on_time, invoice_id, order.total)
        elif chance < 0.9:
            self._payment(late, invoice_id, order.total)
        elif chance < 0.96:
            part = (order.total * Decimal(rng.uniform(0.3, 0.7))).quantize(_CENT)
            self._payment(on_time, invoice_id, part)
            if rng.random() < 0.5:
                self._payment(late, invoice_id, order.total - part)

    def _payment(self, ts: float, invoice_id: str, amount: Decimal) -> None:
        payload = {"payment_id": self._next_id("PAY"), "amount": str(amount)}
        payload |= {"currency": self.p.currency, "invoice_id": invoice_id}
        self.emit(ts, "payment.received", "accounting", payload)

    def _refund(self, order: _Order, ts: int, amount: Decimal, reason: str) -> None:
        amount = min(amount.quantize(_CENT), order.refundable)
        ts = max(ts, self.now)
        if amount <= 0 or ts > self.period.end:
            return
        if self.p.spend_factor < 1 and self.period.baseline <= ts < self.period.decline:
            return  # keeps the usual spend of a deserting customer plain to see
        order.refundable -= amount
        self._count(ts, -amount)
        payload = {"order_id": order.order_id, "amount": str(amount), "currency": self.p.currency}
        self.emit(ts, "purchase.refunded", "accounting", payload | {"reason": reason})

    # --- service

    def _complain(self, order: _Order) -> None:
        rng, now = self.rng, self.now
        product, quantity, price = rng.choice(order.items)
        category, description, resolution, refund_share = rng.choice(_COMPLAINTS)
        severity = rng.choices(("low", "medium", "high"), (5, 4, 2))[0]
        complaint_id = self._next_id("K")
        if severity == "high" and "phone" in self.contact:
            self._log_call(now, "inbound", f"complaint about order {order.order_id}", "escalated")
        payload = {"complaint_id": complaint_id, "category": category, "product_sku": product.sku}
        payload |= {"severity": severity, "description": description.format(name=product.name)}
        self.emit(now + 60, "complaint.filed", "support", payload)
        if severity != "low":
            self._followup("support", f"Check that complaint {complaint_id} is settled", 3)
        if rng.random() < 0.8:
            assignee = {"complaint_id": complaint_id, "assignee": self._agent()}
            self.emit(now + 600, "complaint.assigned", "support", assignee)
        if rng.random() < 0.15:
            return  # left open
        hours = {"low": (1, 24), "medium": (4, 96), "high": (24, 240)}[severity]
        resolved = now + 660 + int(rng.uniform(*hours) * _HOUR)
        payload = {"complaint_id": complaint_id, "resolution": resolution}
        satisfied = rng.random() < 0.7
        if not satisfied and rng.random() < 0.3:  # the customer calls back: opened again
            reason = {"complaint_id": complaint_id, "reason": "the customer says it is not fixed"}
            self.emit(resolved, "complaint.resolved", "support", payload | {"satisfied": False})
            resolved += int(rng.uniform(2, 48) * _HOUR)
            self.emit(resolved, "complaint.reopened", "support", reason)
            resolved += int(rng.uniform(*hours) * _HOUR)
            satisfied = rng.random() < 0.5
        self.emit(resolved, "complaint.resolved", "support", payload | {"satisfied": satisfied})
        if refund_share:
            line = quantity * price * Decimal(str(refund_share))
            self._refund(order, resolved + 600, line, f"complaint {complaint_id}")

    def _followup(self, source: str, reason: str, in_days: float) -> None:
        rng = self.rng
        followup_id, due = self._next_id("F"), self.later(in_days * rng.uniform(0.5, 1.5))
        payload = {"followup_id": followup_id, "due_at": _rfc3339(due), "reason": reason}
        self.emit(
            self.now + 120, "followup.scheduled", source, payload | {"assignee": self._agent()}
        )
        if rng.random() < 0.85:
            done = max(due + rng.randint(-2 * _DAY, _DAY), self.now + 180)
            outcome = rng.choice(("done", "customer satisfied", "left a message", "issue closed"))
            self.emit(
                done, "followup.completed", source, {"followup_id": followup_id, "outcome": outcome}
            )

    def _call(self) -> None:
        inbound = self.rng.random() < 0.6
        topic, outcomes = self.rng.choice(_INBOUND_CALLS if inbound else _OUTBOUND_CALLS)
        outcome = self.rng.choice(outcomes)
        self._log_call(self.now, "inbound" if inbound else "outbound", topic, outcome)
        if outcome in ("callback requested", "quote requested"):
            reason = f"{outcome.capitalize()}: {topic}"
            self._followup("call-center" if inbound else "sales", reason, 2)

    def _log_call(self, ts: int, direction: str, topic: str, outcome: str) -> None:
        rng = self.rng
        if outcome in ("no answer", "voicemail"):
            seconds = rng.randint(0, 40)
        else:
            seconds = int(rng.lognormvariate(5.3 if direction == "inbound" else 5.0, 0.6))
        payload: dict[str, Any] = {"direction": direction, "duration_seconds": seconds}
        payload |= {"agent": self._agent(), "outcome": outcome, "notes": f"Topic: {topic}."}
        if "phone" in self.contact:
            payload["phone"] = self.contact["phone"]
        self.emit(ts, "call.logged", "call-center", payload)

    def _email(self, ts: float, direction: str, subject: str, source: str) -> None:
        payload = {"direction": direction, "subject": subject, "address": self.contact["email"]}
        self.emit(ts, "email.logged", source, payload)

    def _question(self) -> None:
        product = self.rng.choice(PRODUCTS)
        subject = f"Question about the {product.name}"
        self._email(self.now, "inbound", subject, "support")
        self._email(
            self.now + self.rng.randint(_HOUR, 30 * _HOUR), "outbound", f"Re: {subject}", "support"
        )

    def _newsletter(self, _: None) -> None:
        month = datetime.fromtimestamp(self.now, UTC).month
        self._email(self.now, "outbound", _NEWSLETTERS[month - 1], "marketing")
        self.at(self.later(self.rng.uniform(28, 32)), self._newsletter)

    def _browse(self) -> None:
        rng = self.rng
        if self._declining(self.now) and rng.random() >= self.p.spend_factor + 0.2:
            return
        products = rng.sample(PRODUCTS, rng.choice((1, 1, 2, 3)))
        entry: list[tuple[str, str | None]] = [(_SHOP + "/", None)]
        entry.append((f"{_SHOP}/c/{products[0].category}", None))
        self._visit_pages(entry[: rng.choice((0, 1, 1, 2))] + [_product_url(p) for p in products])

    def _visit_pages(self, pages: list[tuple[str, str | None]]) -> int:
        """Emit one web session over `pages` (url, product sku); return when it ended."""
        rng, ts = self.rng, self.now
        session = f"s-{rng.getrandbits(48):012x}"
        for url, sku in pages:
            payload = {"url": url, "session_id": session}
            self.emit(
                ts, "web.visited", "web", payload if sku is None else payload | {"product_sku": sku}
            )
            ts += rng.randint(10, 240)
        return ts

    def _agent(self) -> str:
        return self.rng.choice(_AGENTS)


def _rfc3339(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _timestamp(day: date) -> int:
    return calendar.timegm(day.timetuple())
