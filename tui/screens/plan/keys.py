"""Typing in the plan wizard never leaves it and never loses a letter.

The wizard is a form (`FORM = True`): the app switches its letter keys off there (tui/app.py).
What is left to route is a printable key pressed while a widget that does not take text has the
focus (a button, the runners-up table, a tab, the scroll pane): it goes to the pane's own
input (the model list's filter) or else to the next input in focus order, as if typed there.
Space keeps its meaning on buttons and switches.
"""

from __future__ import annotations

from textual import events
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input, OptionList, Select, TextArea

# Widgets that take printable keys themselves.
_TYPING = (Input, TextArea, Select)


def _target_input(screen: Screen[object], focused: Widget | None) -> Input | None:
    """The input a printable key meant for `focused` should reach."""
    if isinstance(focused, OptionList) and focused.id == "model-list":
        return screen.query_one("#model-filter", Input)
    chain = screen.focus_chain
    start = chain.index(focused) + 1 if focused in chain else 0
    for widget in chain[start:] + chain[:start]:
        if isinstance(widget, Input) and not widget.disabled:
            return widget
    return None


def route_typing(screen: Screen[object], event: events.Key) -> bool:
    """Send a printable key that no focused widget takes to an input; True when it was."""
    character = event.character
    if character is None or not character.isprintable() or not event.is_printable:
        return False
    focused = screen.focused
    if isinstance(focused, _TYPING):
        return False
    if character == " " and focused is not None and not isinstance(focused, OptionList):
        return False  # space presses a button, toggles a switch
    target = _target_input(screen, focused)
    if target is None:
        return False
    event.stop()
    event.prevent_default()
    target.focus()
    target.insert_text_at_cursor(character)
    return True
