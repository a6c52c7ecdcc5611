"""The ground floor of the runtime: the concepts every other part is built from, with no I/O of its own.

Commands and their lifecycle (:mod:`.commands`), the command table (:mod:`.command_table`),
schedule -> commands (:mod:`.schedule`) and batches (:mod:`.batch`), clocks (:mod:`.clock`), the
journal (:mod:`.journal`) and recovery from it (:mod:`.recovery`), state machines
(:mod:`.statemachine`), lifecycle events (:mod:`.events`), retry policy (:mod:`.retry`), asset specs
(:mod:`.assets`), the error hierarchy (:mod:`.errors`) and the one I/O thread (:mod:`.iothread`).

It imports nothing from ``actors``, ``protocols`` or the rest of ``runtime`` (an import-linter contract
in ``pyproject.toml``, run by the test suite, holds it there).
"""
