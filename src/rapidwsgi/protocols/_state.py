"""The server-side HTTP/1.1 connection state machine, as data.

Rules (RFC 9112 §9):

1. There are two parties: *their* side (the client, sending requests) and *our* side
   (the server, sending responses). Each has its own state; the tables below give the
   only legal transitions. A transition not in a table is a bug in the caller and
   raises ``LocalProtocolError``.
2. One request/response *cycle*: their side goes IDLE -Request-> SEND_BODY
   -EndOfMessage-> DONE; our side goes IDLE -Response-> SEND_BODY -EndOfMessage-> DONE.
   A request without a body is complete with its head: IDLE -Request-> DONE, and no
   Data or EndOfMessage follow (the common case costs one event, not two).
3. Our side may respond before their side has finished sending (an early response);
   the connection layer then either drains the rest of the body or closes.
4. A side that is DONE while the connection cannot be reused (``Connection: close``,
   HTTP/1.0 without keep-alive, close-delimited response, a framing error) moves to
   MUST_CLOSE: nothing further is parsed or sent.
5. When both sides are DONE and the connection is reusable, ``start_next_cycle`` puts
   both back to IDLE; pipelined bytes already received are then parsed (§9.3.2).
   Until then, the parser reports PAUSED and reads nothing ahead.
6. Any framing error moves their side to ERROR and any error of ours to ERROR on our
   side; an ERROR state is terminal: after a framing error nothing else on that
   connection is processed (the baseline against request smuggling).
7. The peer closing cleanly while IDLE is CLOSED; closing in the middle of a message is
   a framing error (an incomplete message, §8).
"""

from __future__ import annotations

from typing import Final

IDLE: Final = "IDLE"
SEND_BODY: Final = "SEND_BODY"
DONE: Final = "DONE"
MUST_CLOSE: Final = "MUST_CLOSE"
CLOSED: Final = "CLOSED"
ERROR: Final = "ERROR"

# Event kinds the tables are keyed on.
EV_HEAD: Final = "head"  # Request (theirs) or Response (ours)
EV_HEAD_COMPLETE: Final = "head+end"  # a Request without a body
EV_DATA: Final = "data"
EV_END: Final = "end"  # EndOfMessage
EV_CLOSED: Final = "closed"

THEIR_TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (IDLE, EV_HEAD): SEND_BODY,
    (IDLE, EV_HEAD_COMPLETE): DONE,
    (IDLE, EV_CLOSED): CLOSED,
    (SEND_BODY, EV_DATA): SEND_BODY,
    (SEND_BODY, EV_END): DONE,
    (DONE, EV_CLOSED): CLOSED,
    (MUST_CLOSE, EV_CLOSED): CLOSED,
}

OUR_TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (IDLE, EV_HEAD): SEND_BODY,
    (SEND_BODY, EV_DATA): SEND_BODY,
    (SEND_BODY, EV_END): DONE,
}
