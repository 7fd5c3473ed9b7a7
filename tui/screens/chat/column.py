"""A column of the chat: one model's side of the conversation, anchored to its newest answer."""

from __future__ import annotations

from textual.containers import VerticalScroll

from engine.chat import Conversation
from tui.screens.chat.message import ChatAnswer, ChatPrompt


class ChatColumn(VerticalScroll):
    """The exchanges answered by `variant` (base, final, checkpoint-N). Keeps the turns the
    model sees (`conversation`): what this column shows is what its model remembers."""

    def __init__(self, variant: str | None, *, index: int, id: str | None = None) -> None:
        super().__init__(id=id, classes="chat-column")
        self.index = index
        self.conversation = Conversation()
        self.variant = variant or ""
        self.display = variant is not None

    def on_mount(self) -> None:
        self.show_variant(self.variant)
        self.anchor()  # stay at the bottom while answers grow, until the user scrolls up

    def show_variant(self, variant: str) -> None:
        self.variant = variant
        self.border_title = variant

    async def add_exchange(self, prompt: str) -> ChatAnswer:
        answer = ChatAnswer(self.variant)
        await self.mount_all([ChatPrompt(prompt), answer])
        self.anchor()
        return answer

    async def clear(self) -> None:
        self.conversation.clear()
        await self.remove_children()

    @property
    def answers(self) -> list[ChatAnswer]:
        return list(self.query(ChatAnswer))
