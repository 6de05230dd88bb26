"""Who the demo customers are and what they talk about: segments and profiles, names, phones,
addresses and mail domains by country, agents, call topics, complaints and newsletters."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from random import Random

_DESERTING_SHARE = 0.1
"""Share of customers whose spend falls to at most 40% in the last 4 months."""


@dataclass(frozen=True, slots=True)
class _Segment:
    orders: float  # orders a month, refills of consumables not counted
    rhythm: float  # regularity of those orders (gamma shape of the gaps; 1 is Poisson)
    bundle: float  # share of those orders that are a bundle
    calls: float  # calls a month
    browse: float  # web sessions a month without an order


_SEGMENTS = {
    "occasional": _Segment(orders=0.3, rhythm=1, bundle=0.45, calls=0.15, browse=0.5),
    "regular": _Segment(orders=1.5, rhythm=4, bundle=0.04, calls=0.3, browse=0.8),
    "big_spender": _Segment(orders=2.5, rhythm=3, bundle=0.12, calls=0.6, browse=1.2),
}


@dataclass(frozen=True, slots=True)
class _Country:
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    phones: tuple[str, ...]  # "#" is a random digit
    addresses: tuple[str, ...]  # "{n}" a house number, "#" a digit
    mail_domains: tuple[str, ...]
    company_suffixes: tuple[str, ...]
    tld: str


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split("|"))


_COUNTRIES = {
    "DE": _Country(
        _words("Anna|Lukas|Sophie|Jonas|Marie|Felix|Lena|Jürgen|Katrin|Tobias|Sabine|Uwe"),
        _words("Müller|Schmidt|Schneider|Fischer|Weber|Meyer|Wagner|Becker|Hoffmann|Schäfer"),
        _words("+49 30 #######|030 ########|0171/#######|+49 (0)89 ########|+491520#######"),
        _words(
            "Hauptstraße {n}, 10###  Berlin|Lindenweg {n}, 80### München|"
            "Gartenstr. {n}, 20### Hamburg|Schillerplatz {n}, 50### Köln"
        ),
        _words("gmx.de|web.de|t-online.de|gmail.com"),
        _words("GmbH|GmbH & Co. KG|AG"),
        "de",
    ),
    "FR": _Country(
        _words("Camille|Lucas|Léa|Hugo|Chloé|Louis|Manon|Théo|Élodie"),
        _words("Martin|Bernard|Dubois|Thomas|Robert|Richard|Petit|Durand|Lefèvre"),
        _words("+33 1 ## ## ## ##|06 ## ## ## ##|+33 (0)6########|01.##.##.##.##"),
        _words(
            "{n} rue de la Paix, 75### Paris|{n} avenue Jean Jaurès, 69### Lyon|"
            "{n} boulevard Victor Hugo, 13### Marseille"
        ),
        _words("orange.fr|free.fr|laposte.net|gmail.com"),
        _words("SARL|SAS"),
        "fr",
    ),
    "NL": _Country(
        _words("Daan|Emma|Sem|Julia|Lieke|Bram|Noor|Jesse"),
        _words("de Jong|Jansen|de Vries|van den Berg|Bakker|Visser|Smit|van Dijk"),
        _words("+31 20 ### ####|06-########|+31 6 ########"),
        _words("Keizersgracht {n}, 1### AB Amsterdam|Coolsingel {n}, 3### CD Rotterdam"),
        _words("ziggo.nl|kpnmail.nl|gmail.com"),
        _words(
            "B.V.",
        ),
        "nl",
    ),
    "ES": _Country(
        _words("Lucía|Hugo|Martina|Pablo|Sofía|Álvaro|Carmen|Javier"),
        _words("García|Fernández|González|Rodríguez|López|Martínez|Sánchez|Pérez"),
        _words("+34 91 ### ## ##|6## ### ###|+34 6########"),
        _words("Calle Mayor {n}, 28### Madrid|Carrer de Mallorca {n}, 08### Barcelona"),
        _words("telefonica.net|gmail.com|hotmail.es"),
        _words("S.L.|S.A."),
        "es",
    ),
    "US": _Country(
        _words("James|Mary|Olivia|Liam|Emma|Noah|Ava|Ethan|Michael|Jennifer"),
        _words("Smith|Johnson|Williams|Brown|Jones|Miller|Davis|Wilson|Garcia|O'Brien"),
        _words("(###) ###-####|+1 ###-###-####|###.###.####|+1 (###) ### ####"),
        _words(
            "{n} Main Street, Springfield, IL 627##|{n} Oak Avenue, Austin, TX 787##|"
            "{n} 5th Avenue, Apt. ##, New York, NY 100##"
        ),
        _words("gmail.com|yahoo.com|outlook.com|icloud.com"),
        _words("LLC|Inc.|Corp."),
        "com",
    ),
    "GB": _Country(
        _words("Oliver|Amelia|George|Isla|Harry|Poppy|Jack|Freya|Siobhan"),
        _words("Taylor|Davies|Evans|Thomas|Roberts|Walker|Wright|Hughes|Smith-Jones"),
        _words("+44 20 #### ####|07### ######|(0161) ### ####|+447#########"),
        _words(
            "{n} High Street, London SW1A #AA|Flat #, {n} Church Road, Manchester M## #XY|"
            "{n} Station Road, Leeds LS# #QT"
        ),
        _words("btinternet.com|gmail.com|outlook.com|sky.com"),
        _words("Ltd|LLP|plc"),
        "co.uk",
    ),
}
_COUNTRIES_BY_CURRENCY = {"EUR": ("DE", "DE", "DE", "FR", "FR", "NL", "ES"), "USD": ("US",)}
_UTC_OFFSET_HOURS = {"EUR": 1, "USD": -6, "GBP": 0}  # of the customer's local time of day
_TRADES = _words("Design|Consulting|Logistics|Bürotechnik|Studio|Café|Architects|Dental")
_AGENTS = _words("Grace|Alan|Ada|Linus|Margaret|Tim|Barbara|Ken|Frances|Edsger")
_INBOUND_CALLS = (
    ("order status", ("resolved", "resolved", "callback requested")),
    ("product question", ("resolved", "quote requested", "callback requested")),
    ("billing question", ("resolved", "escalated", "callback requested")),
    ("return request", ("return label sent", "escalated")),
)
_OUTBOUND_CALLS = (
    ("satisfaction survey", ("completed", "no answer", "voicemail")),
    ("upgrade offer", ("quote requested", "not interested", "no answer", "callback requested")),
    ("payment reminder", ("promised to pay", "no answer", "voicemail")),
)
_COMPLAINTS = (  # category, description, resolution, share of the line refunded
    ("defective", "The {name} stopped working after a few days.", "Replacement sent.", 1),
    ("damaged in transit", "The {name} arrived damaged.", "Refunded the damaged item.", 1),
    ("late delivery", "The {name} arrived a week late.", "Apologised, voucher sent.", 0.1),
    ("wrong item", "I ordered the {name} but got something else.", "Correct item sent.", 0),
    ("billing", "I was charged twice for the {name}.", "Duplicate charge reversed.", 0),
    ("service", "Nobody answered my questions about the {name}.", "Called back, explained.", 0),
)
_NEWSLETTERS = _words(
    "New year, new gear|Winter sale|Spring cleaning deals|Easter offers|Mother's Day gifts|"
    "Summer tech|Holiday essentials|Back to school|Autumn coffee week|Office upgrade month|"
    "Black Friday preview|Christmas gift guide"
)


@dataclass(frozen=True, slots=True)
class _Profile:
    customer_id: str
    segment: _Segment
    currency: str
    business: bool
    joined: float  # share of the period gone at registration; 0: a customer from before
    spend_factor: float  # at most this share of the usual spend in the last 4 months


def _profiles(customers: int, seed: int) -> Iterator[tuple[_Profile, Random]]:
    master = Random(seed)
    for index in range(1, customers + 1):
        rng = Random(master.getrandbits(64))
        deserting = rng.random() < _DESERTING_SHARE
        if deserting:
            segment = rng.choices(("regular", "big_spender"), (3, 1))[0]
        else:
            segment = rng.choices(tuple(_SEGMENTS), (45, 40, 15))[0]
        joined = 0.0 if deserting or rng.random() < 0.45 else rng.uniform(0.0, 0.97)
        profile = _Profile(
            customer_id=f"C-{index:06d}",
            segment=_SEGMENTS[segment],
            currency=rng.choices(("EUR", "USD", "GBP"), (80, 12, 8))[0],
            business=rng.random() < (0.5 if segment == "big_spender" else 0.06),
            joined=joined,
            spend_factor=rng.choice((0.0, 0.1, 0.25, 0.4)) if deserting else 1.0,
        )
        yield profile, rng


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in ascii_text.lower() if c.isalnum())


def _digits(rng: Random, pattern: str) -> str:
    return "".join(str(rng.randint(0, 9)) if c == "#" else c for c in pattern)
