"""Communication: the protocol (schemes as records of pure functions), the one adapter from
stateless compressors, the collectives a scheme may use, and the channel that runs them.

    suite.comm.protocol   Uplink, Downlink, Env, CommState, Sent, Received
    suite.comm.link       Link: gather, all_reduce, exchange, and the random streams
    suite.comm.adapter    uplink_of / downlink_of (Compressor -> scheme), dense_downlink
    suite.comm.channel    Channel (send_up, broadcast, lanes, bit counters)

docs/extending.md walks through writing a scheme of one's own.
"""

from .adapter import as_downlink, as_uplink, dense_downlink, downlink_of, uplink_of
from .channel import DOWNLINK_BITS_PER_COORDINATE, Channel, Lane
from .link import REDUCE_OPS, Link
from .protocol import STATELESS, CommState, Downlink, Env, Received, Sent, Uplink, stateless

__all__ = ["Channel", "Lane", "Link", "REDUCE_OPS", "DOWNLINK_BITS_PER_COORDINATE", "Uplink",
           "Downlink", "Env", "CommState", "STATELESS", "Sent", "Received", "stateless",
           "uplink_of", "downlink_of", "dense_downlink", "as_uplink", "as_downlink"]
