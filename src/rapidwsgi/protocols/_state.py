"""The server-side HTTP/1.1 connection state machine, as data.

Rules (RFC 9112 §9):

1. There are two parties: *their* side (the client, sending requests) and *our* side
   (the server, sending responses). Each has its own state; the tables below give the
   only legal transitions. A transition not in a table is a bug in the caller and
   raises ``LocalProtocolError`` (``ServerConnection._advance_*`` in ``base.py`` make
   every state change, through :func:`advance`; nothing assigns a state directly).
2. One request/response *cycle*: their side goes IDLE -Request-> SEND_BODY
   -EndOfMessage-> DONE; our side goes IDLE -Response-> SEND_BODY -EndOfMessage-> DONE.
   A request without a body is complete with its head: IDLE -Request-> DONE, and no
   Data or EndOfMessage follow (the common case costs one event, not two).
3. Our side may respond before their side has finished sending (an early response);
   the connection layer then either drains the rest of the body or closes.
4. A side that is DONE while the connection cannot be reused (``Connection: close``,
   HTTP/1.0 without keep-alive, close-delimited response, a framing error) moves to
   MUST_CLOSE (event ``last``): nothing further is parsed or sent.
5. When both sides are DONE and the connection is reusable, ``start_next_cycle`` puts
   both back to IDLE (event ``next``); pipelined bytes already received are then parsed (§9.3.2).
   Until then, the parser reports PAUSED and reads nothing ahead.
6. Any framing error moves their side to ERROR and any error of ours to ERROR on our
   side (event ``error``; reporting ours again changes nothing); an ERROR state is
   terminal: after a framing error nothing else on that
   connection is processed (the baseline against request smuggling).
7. The peer closing cleanly while IDLE is CLOSED; closing in the middle of a message is
   a framing error (an incomplete message, §8).
8. The C request path (``_cfast.c``) runs whole cycles without this machine; a cycle it
   ends with a close is replayed here (``closed_by_c_path``) as the events it was: from
   IDLE on both sides (always, in practice) as the result of that replay, computed
   through :func:`advance` once at import; from any other state move by move, raising.

What is guaranteed, and how it is tested: every state change of either side goes
through :func:`advance` (rule 8's composite move through it once, at import), which
raises ``LocalProtocolError`` for a pair not in the tables (``tests/test_state.py``
tries every pair of state and event on both sides, directly and through
``ServerConnection``). A check scans the few states an event may happen in
(:class:`Move`), no hashing: measured with callgrind, see ``docs/architecture.md``.
The ``data`` self-loops are listed for completeness; a Data event is produced only in
SEND_BODY by construction (and ``send_data`` refuses any other state), so no lookup is
made for it.
"""

from __future__ import annotations

from typing import Final

from ..errors import LocalProtocolError

IDLE: Final = "IDLE"
SEND_BODY: Final = "SEND_BODY"
DONE: Final = "DONE"
MUST_CLOSE: Final = "MUST_CLOSE"
CLOSED: Final = "CLOSED"
ERROR: Final = "ERROR"

STATES: Final = (IDLE, SEND_BODY, DONE, MUST_CLOSE, CLOSED, ERROR)

# Event kinds the tables are keyed on.
EV_HEAD: Final = "head"  # Request (theirs) or Response (ours)
EV_HEAD_COMPLETE: Final = "head+end"  # a Request without a body
EV_DATA: Final = "data"
EV_END: Final = "end"  # EndOfMessage
EV_LAST: Final = "last"  # the finished cycle is the connection's last (rule 4)
EV_NEXT: Final = "next"  # both sides done, the connection reusable (rule 5)
EV_ERROR: Final = "error"  # rule 6
EV_CLOSED: Final = "closed"  # rule 7

EVENTS: Final = (EV_HEAD, EV_HEAD_COMPLETE, EV_DATA, EV_END, EV_LAST, EV_NEXT, EV_ERROR, EV_CLOSED)

THEIR_TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (IDLE, EV_HEAD): SEND_BODY,
    (IDLE, EV_HEAD_COMPLETE): DONE,
    (IDLE, EV_CLOSED): CLOSED,
    (IDLE, EV_ERROR): ERROR,
    (SEND_BODY, EV_DATA): SEND_BODY,
    (SEND_BODY, EV_END): DONE,
    (SEND_BODY, EV_ERROR): ERROR,
    (DONE, EV_LAST): MUST_CLOSE,
    (DONE, EV_NEXT): IDLE,
    (DONE, EV_CLOSED): CLOSED,
    (DONE, EV_ERROR): ERROR,  # bytes a gateway must not send after its request (uwsgi)
    (MUST_CLOSE, EV_CLOSED): CLOSED,
    (MUST_CLOSE, EV_ERROR): ERROR,
}

OUR_TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (IDLE, EV_HEAD): SEND_BODY,
    (IDLE, EV_ERROR): ERROR,
    (SEND_BODY, EV_DATA): SEND_BODY,
    (SEND_BODY, EV_END): DONE,
    (SEND_BODY, EV_ERROR): ERROR,
    (DONE, EV_LAST): MUST_CLOSE,
    (DONE, EV_NEXT): IDLE,
    (DONE, EV_ERROR): ERROR,
    (MUST_CLOSE, EV_ERROR): ERROR,
    (ERROR, EV_ERROR): ERROR,
}


class Move:
    """One event on one side, as the table above gives it: the states it may happen in
    (``sources``) and the one it leads to (``target``: one per event, on either side).
    ``ServerConnection`` holds these and passes them to :func:`advance`, so a checked
    change costs a scan of a tuple of at most four states, no hashing."""

    __slots__ = ("event", "side", "sources", "target")

    def __init__(self, side: str, event: str, sources: tuple[str, ...], target: str) -> None:
        self.side = side
        self.event = event
        self.sources = sources
        self.target = target


def _moves(table: dict[tuple[str, str], str], side: str) -> dict[str, Move]:
    """A table as one Move per event (none of its sources for an event not in it)."""
    out = {}
    for event in EVENTS:
        pairs = [(state, new) for (state, ev), new in table.items() if ev == event]
        targets = {new for _, new in pairs}
        if len(targets) > 1:  # the Move shape relies on it; the tables keep it
            raise ValueError(f"{side} side: {event!r} leads to {sorted(targets)}")
        target = targets.pop() if targets else ERROR
        out[event] = Move(side, event, tuple(state for state, _ in pairs), target)
    return out


#: The tables above, one Move per event, as :func:`advance` reads them.
THEIR_MOVES: Final = _moves(THEIR_TRANSITIONS, "their")
OUR_MOVES: Final = _moves(OUR_TRANSITIONS, "our")


def replay(moves: tuple[Move, ...], state: str) -> str:
    """The state after ``moves`` one after the other from ``state`` (each checked)."""
    for move in moves:
        state = advance(move, state)
    return state


def advance(move: Move, state: str) -> str:
    """The state after ``move`` in ``state``; raises LocalProtocolError (rule 1) when
    the table has no such transition."""
    for source in move.sources:
        if source is state:
            return move.target
    raise LocalProtocolError(f"{move.side} side: no transition from {state} on {move.event!r}")
