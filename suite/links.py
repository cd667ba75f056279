"""`hardware.link.*`: a distributed job's ranks on a slow link, on one machine.

    hardware.link.rate     null: the plain loopback; or a rate, e.g. 100mbit, 1gbit, 2.5gbit
                           (units bit, kbit, mbit, gbit: powers of 1000 bits per second)
    hardware.link.delay    null, or a one-way delay per packet, e.g. 200us, 5ms (kernel netem)
    hardware.link.mtu      the link's MTU in bytes (default 1500, an Ethernet's)
    hardware.link.alpha_s  the cost model's seconds per message on this link (null:
                           DEFAULT_ALPHA_S plus the delay); `commsgd-calibrate` measures it

With a rate or a delay, the launcher starts the ranks in a fresh network namespace whose
loopback is shaped so (suite/netns.py), the rendezvous and gloo on its 127.0.0.1, and every
run logs, beside `time/comm_s`, the measured and the projected seconds of its collectives per
step (`time/comm_per_step_s`, `time/comm_projected_per_step_s`; suite/costmodel.py's model on
this link). What cannot work is refused before any rank starts, in one line.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass

from suite.config import ConfigError
from suite.costmodel import DEFAULT_MTU, Link

RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
DELAY_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
KEYS = ("rate", "delay", "mtu", "alpha_s")
MTU_RANGE = (576, 65536)  # 576: the IPv4 datagram every host must accept
# Seconds per message (one round of a ring collective) on the shaped loopback of the 2-core
# development machine: gloo's and TCP's software cost. The median of the α that
# `commsgd-calibrate` (100mbit and 1gbit) fitted in a dozen runs there, which spread from 0 to
# 570 µs with the machine's load (docs/performance.md, "Shaped links"): a constant, so that a
# run's projection does not depend on the store it is logged to.
DEFAULT_ALPHA_S = 2.5e-4
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"


@dataclass(frozen=True)
class LinkSpec:
    rate_bps: float | None
    delay_s: float | None
    mtu: int
    alpha_s: float  # the model's per-message latency, the delay included
    what: str  # "hardware.link.rate=100mbit", to name the setting in messages

    def model(self) -> Link | None:
        """The cost model's link: the shaped loopback (shared by all ranks); None without a
        rate (a delay alone leaves the bandwidth at loopback speed, which nothing states)."""
        if self.rate_bps is None:
            return None
        return Link.shaped_loopback(self.rate_bps, alpha_s=self.alpha_s, mtu=self.mtu)


def _quantity(key: str, value, units: dict[str, float], examples: str) -> float:
    text = str(value).strip().lower()
    m = re.fullmatch(rf"({_NUMBER})\s*([a-z]+)", text)
    if m is None or m.group(3) not in units or not float(m.group(1)) > 0:
        raise ConfigError(f"hardware.link.{key}={value!r}: a positive number with a unit "
                          f"({', '.join(units)}), e.g. {examples}; or null")
    return float(m.group(1)) * units[m.group(3)]


def parse_rate(value) -> float:
    """'100mbit' → 1e8 bits per second."""
    return _quantity("rate", value, RATE_UNITS, "100mbit, 1gbit")


def parse_delay(value) -> float:
    """'5ms' → 0.005 seconds."""
    return _quantity("delay", value, DELAY_UNITS, "200us, 5ms")


def link_spec(hw: dict) -> LinkSpec | None:
    """The hardware's link, checked; None when it asks for no shaping (rate and delay null)."""
    link = hw.get("link")
    if link is None:
        return None
    if not isinstance(link, dict):
        raise ConfigError(f"hardware.link={link!r}: a group of keys ({', '.join(KEYS)})")
    unknown = sorted(set(link) - set(KEYS))
    if unknown:
        raise ConfigError(f"hardware.link.{unknown[0]}: not a link key; allowed: "
                          f"{', '.join(KEYS)}")
    rate = None if link.get("rate") is None else parse_rate(link["rate"])
    delay = None if link.get("delay") is None else parse_delay(link["delay"])
    mtu = link.get("mtu", DEFAULT_MTU)
    lo, hi = MTU_RANGE
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not lo <= mtu <= hi:
        raise ConfigError(f"hardware.link.mtu={mtu!r}: an integer number of bytes in "
                          f"{lo}..{hi} (1500: Ethernet)")
    alpha = link.get("alpha_s")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not (alpha >= 0 and math.isfinite(alpha))):
        raise ConfigError(f"hardware.link.alpha_s={alpha!r}: seconds per message, a number "
                          ">= 0, or null for the default")
    if rate is None and delay is None:
        return None
    what = ", ".join(f"hardware.link.{k}={link[k]}" for k in ("rate", "delay")
                     if link.get(k) is not None)
    alpha_s = float(alpha) if alpha is not None else DEFAULT_ALPHA_S + (delay or 0.0)
    return LinkSpec(rate, delay, mtu, alpha_s, what)


def check_job(hw: dict, *, tracking_uri: str | None, distributed: bool,
              under_torchrun: bool) -> LinkSpec | None:
    """What about a link can be refused before anything starts; returns the link spec."""
    spec = link_spec(hw)
    if spec is None:
        return None
    if not distributed:
        raise ConfigError(f"{spec.what}: a link joins ranks, and hardware={hw.get('name')} "
                          "runs every worker in one process; use hardware=multi_cpu")
    if hw.get("backend") != "gloo":
        raise ConfigError(f"{spec.what}: the shaped link is a loopback that gloo's sockets "
                          f"use; backend {hw.get('backend')} on one host does not go through it "
                          "(use hardware=multi_cpu)")
    if under_torchrun:
        raise ConfigError(f"{spec.what}: torchrun started these processes, so commsgd cannot "
                          "put them on a shaped link; shape the real network (tc) instead, or "
                          "start the job with commsgd-run")
    if tracking_uri and re.match(r"^[a-z][a-z0-9+.-]*://", tracking_uri) and \
            not tracking_uri.startswith(("sqlite:", "file:")):
        raise ConfigError(f"{spec.what}: the ranks run in a private network namespace where "
                          f"only its own 127.0.0.1 exists, so tracking.uri={tracking_uri} is "
                          "out of reach; use a SQLite or file store, or tracking=none")
    return spec


def open_namespace(spec: LinkSpec | None):
    """The shaped namespace for a job's ranks (suite/netns.py), or None for the plain loopback.
    Raises LinkUnavailable, naming what the machine lacks."""
    if spec is None:
        return None
    from suite.netns import ShapedLoopback

    return ShapedLoopback.create(rate_bps=spec.rate_bps, delay_s=spec.delay_s, mtu=spec.mtu,
                                 what=spec.what)


def entered(ns):
    """`ns.entered()`, or nothing to do for the plain loopback (ns None)."""
    return contextlib.nullcontext() if ns is None else ns.entered()


def close(ns) -> None:
    if ns is not None:
        ns.close()


# -- what a run logs ----------------------------------------------------------------------------
def measured_values(backend) -> list[float]:
    """Values to add to the runner's max-over-ranks timing collective: minus the seconds this
    rank spent in its step's collectives, so that the max gives the *smallest* over ranks. A
    rank that reaches a collective first waits there for the others, and that wait is their
    compute, not the link's; the rank that waited least is the best measure of the wire."""
    ledger = getattr(backend, "ledger", None)
    if ledger is None or backend.world_size < 2:
        return []
    return [-ledger.seconds]


def step_metrics(backend, link: Link | None, steps: int, reduced: list[float]) -> dict:
    """`time/comm_per_step_s` (measured, from `reduced`, the max-over-ranks of
    `measured_values`) and `time/comm_projected_per_step_s` (the model on `link`, for the
    collectives in the backend's ledger), both averaged over the steps so far."""
    if not reduced or steps <= 0:
        return {}
    out = {"time/comm_per_step_s": -reduced[0] / steps}
    if link is not None:
        out["time/comm_projected_per_step_s"] = backend.ledger.time(link) / steps
    return out
