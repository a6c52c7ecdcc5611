#!/usr/bin/env python3
"""A small, reproducible mutation-testing tool (a plain script; pytest does not collect it).

It parses one module with :mod:`ast`, lists every mutant of these kinds:

* ``cmp``    comparison swaps: ``==``/``!=``, ``is``/``is not``, ``in``/``not in``, and for each of
             ``< <= > >=`` its boundary twin (``<`` <-> ``<=``, ``>`` <-> ``>=``) and its negation;
* ``bin``    arithmetic and bitwise swaps (``+``/``-``, ``*``/``/``, ``//``/``/``, ``%``/``*``,
             ``|``/``&``, ``<<``/``>>``), also in augmented assignments (``+=`` -> ``-=``);
* ``const``  constants: an int or float ``n`` -> ``n + 1`` (so ``0`` -> ``1``), ``True`` <-> ``False``,
             ``None`` -> ``True`` (only where a value is compared or assigned);
* ``bool``   ``and`` <-> ``or``;
* ``not``    ``not x`` -> ``x`` (and ``-x`` -> ``x``);
* ``del``    one simple statement replaced by ``pass``;
* ``ret``    ``return x`` -> ``return None`` (``return None`` -> ``return True``).

It samples ``--sample`` of them with a fixed ``--seed``, and for each one, one at a time: writes
the mutant over the module *in place* (the original is kept in memory and in a backup file under
``$TMPDIR/mutate-backups``), runs the module's tests with a per-mutant timeout,
and restores the original (in a ``finally``, also on Ctrl-C or SIGTERM; a backup left by a killed
run is restored at the next start). Byte-code caches of the module are removed around each run and
``PYTHONDONTWRITEBYTECODE`` is set, so a mutant can never run from a stale ``.pyc``.

A mutant is *killed* when the test run fails (any non-zero pytest exit) and, unless ``--no-confirm``,
the test that failed fails again when re-run alone (if it does not, the whole run is repeated, up to
3 times; a mutant whose kills never reproduce is reported as *flaky* and counted as survived: socket
tests can fail under load); *timeout* when it runs longer
than the timeout (counted as detected); *survived* otherwise. Score = (killed + timeout) /
(sampled - equivalent). ``--equivalent FILE`` lists survivor ids judged equivalent, one per line as
``ID  -- reason`` (``#`` starts a comment line); a listed mutant that is killed is reported.

Usage (from the repository root; pytest runs under the interpreter that runs this script, or ``--python``,
so a git worktree without its own ``.venv`` can use another checkout's)::

    .venv/bin/python tests/tools/mutate.py --module runtime/core/journal.py \
        --tests tests/test_journal.py tests/test_journal_format.py tests/test_journal_streams.py \
        tests/test_compaction.py --sample 150 --seed 0 --equivalent tests/tools/equivalent/journal.txt

``--list`` prints the sampled mutants without running them; ``--only ID`` (repeatable) runs just
those mutants (they need not be in the sample).

The core modules and their own tests (the equivalent lists are ``tests/tools/equivalent/<name>.txt``):

=================================  ==================================================================
module                             tests
=================================  ==================================================================
runtime/core/journal.py            tests/test_journal.py tests/test_journal_format.py
                                   tests/test_journal_streams.py tests/test_compaction.py
runtime/core/schedule.py           tests/test_schedule.py
runtime/core/statemachine.py       tests/test_statemachine.py
runtime/core/command_table.py      tests/test_command_table.py tests/test_dedupe.py
                                   tests/test_compaction.py tests/test_journal_streams.py
protocols/modbus/register_map.py   tests/test_modbus_link.py tests/test_modbus_sim.py
                                   tests/test_modbus_faults.py tests/test_e2e_modbus.py
                                   tests/test_modbus_site.py (every test file that uses the maps)
=================================  ==================================================================

Run one module at a time: the module file is rewritten in place while its mutants run.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

BACKUP_DIR = os.path.join(tempfile.gettempdir(), "mutate-backups")


# -- mutant generation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    line: int
    col: int
    end_line: int
    end_col: int
    kind: str
    detail: str  # short, for the id
    description: str
    replacement: str  # source text replacing [line:col, end_line:end_col)
    index: int = 0  # disambiguates several mutants at the same spot

    @property
    def id(self) -> str:
        return f"L{self.line}C{self.col}-{self.kind}-{self.detail}" + (f"-{self.index}" if self.index else "")


CMP_SWAPS: dict[type, list[type]] = {
    ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq],
    ast.Is: [ast.IsNot], ast.IsNot: [ast.Is],
    ast.In: [ast.NotIn], ast.NotIn: [ast.In],
    ast.Lt: [ast.LtE, ast.GtE], ast.LtE: [ast.Lt, ast.Gt],
    ast.Gt: [ast.GtE, ast.LtE], ast.GtE: [ast.Gt, ast.Lt],
}
BIN_SWAPS: dict[type, list[type]] = {
    ast.Add: [ast.Sub], ast.Sub: [ast.Add], ast.Mult: [ast.Div], ast.Div: [ast.Mult],
    ast.FloorDiv: [ast.Div], ast.Mod: [ast.Mult], ast.BitOr: [ast.BitAnd], ast.BitAnd: [ast.BitOr],
    ast.LShift: [ast.RShift], ast.RShift: [ast.LShift], ast.Pow: [ast.Mult],
}
OP_TEXT = {
    ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
    ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.BitOr: "|", ast.BitAnd: "&", ast.LShift: "<<",
    ast.RShift: ">>", ast.Pow: "**", ast.And: "and", ast.Or: "or",
}
SIMPLE_STATEMENTS = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Raise, ast.Assert,
                     ast.Delete, ast.Continue, ast.Break)


def short(src: str, limit: int = 60) -> str:
    text = " ".join(src.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Generator(ast.NodeVisitor):
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.mutants: list[Mutant] = []
        self._skip: set[int] = set()  # ids of nodes not to mutate (annotations, docstrings, f-strings)

    # source helpers (col offsets are UTF-8 byte offsets)
    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.unparse(node)

    def add(self, node: ast.AST, kind: str, detail: str, description: str, replacement: str) -> None:
        self.mutants.append(Mutant(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset,  # type: ignore[attr-defined]
                                   kind, detail, description, replacement))

    def add_expr(self, node: ast.expr, new: ast.expr, kind: str, detail: str, description: str) -> None:
        self.add(node, kind, detail, description, "(" + ast.unparse(new) + ")")

    # skipping
    def skip_tree(self, node: ast.AST | None) -> None:
        if node is not None:
            for sub in ast.walk(node):
                self._skip.add(id(sub))

    def generic_visit(self, node: ast.AST) -> None:
        for sub in ast.iter_child_nodes(node):
            if id(sub) not in self._skip:
                self.visit(sub)

    def _docstring(self, body: list[ast.stmt]) -> None:
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            self.skip_tree(body[0])

    def visit_Module(self, node: ast.Module) -> None:
        self._docstring(node.body)
        for stmt in node.body:  # __all__ and TYPE_CHECKING blocks are not behaviour
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in stmt.targets):
                self.skip_tree(stmt)
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                self.skip_tree(stmt)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._docstring(node.body)
        self.skip_tree(node.returns)
        for arg in ast.walk(node.args):
            if isinstance(arg, ast.arg):
                self.skip_tree(arg.annotation)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._docstring(node.body)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.skip_tree(node.annotation)
        self.visit_stmt(node)
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return  # f-strings: messages, and node positions inside them are unreliable

    def visit_Import(self, node: ast.stmt) -> None:
        return

    visit_ImportFrom = visit_Import

    # statements
    def visit_stmt(self, node: ast.stmt) -> None:
        if not isinstance(node, SIMPLE_STATEMENTS):
            return
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return  # a bare string or ``...``
        self.add(node, "del", "pass", f"delete statement '{short(self.segment(node))}'", "pass")

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.stmt) and not isinstance(node, ast.AnnAssign):
            self.visit_stmt(node)
        super().visit(node)

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is None or (isinstance(node.value, ast.Constant) and node.value.value is None):
            new = "return True"
            desc = "return True instead of None"
        else:
            new = "return None"
            desc = f"return None instead of '{short(self.segment(node.value))}'"
        self.add(node, "ret", "None" if new == "return None" else "True", desc, new)
        self.generic_visit(node)

    # expressions
    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            for new_op in CMP_SWAPS.get(type(op), []):
                ops = list(node.ops)
                ops[i] = new_op()
                new = ast.Compare(left=node.left, ops=ops, comparators=node.comparators)
                a, b = OP_TEXT[type(op)], OP_TEXT[new_op]
                self.add_expr(node, new, "cmp", f"{i}{a}{b}".replace(" ", ""),
                              f"replace {a} with {b} in '{short(self.segment(node))}'")
        self.generic_visit(node)

    def _binop(self, node: ast.BinOp | ast.AugAssign, op: ast.operator) -> list[type]:
        return BIN_SWAPS.get(type(op), [])

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if not (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)):
            for new_op in self._binop(node, node.op):
                new = ast.BinOp(left=node.left, op=new_op(), right=node.right)
                a, b = OP_TEXT[type(node.op)], OP_TEXT[new_op]
                self.add_expr(node, new, "bin", f"{a}{b}", f"replace {a} with {b} in '{short(self.segment(node))}'")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        for new_op in self._binop(node, node.op):
            new = ast.AugAssign(target=node.target, op=new_op(), value=node.value)
            a, b = OP_TEXT[type(node.op)], OP_TEXT[new_op]
            self.add(node, "bin", f"{a}={b}=", f"replace {a}= with {b}= in '{short(self.segment(node))}'",
                     ast.unparse(new))
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        new_op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        a, b = OP_TEXT[type(node.op)], OP_TEXT[type(new_op)]
        self.add_expr(node, ast.BoolOp(op=new_op, values=node.values), "bool", f"{a}{b}",
                      f"replace {a} with {b} in '{short(self.segment(node))}'")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self.add_expr(node, node.operand, "not", "drop", f"remove 'not' in '{short(self.segment(node))}'")
        elif isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            self.add_expr(node, node.operand, "neg", "drop", f"remove unary '-' in '{short(self.segment(node))}'")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        v = node.value
        if isinstance(v, bool):
            self.add_expr(node, ast.Constant(not v), "const", f"{v}{not v}", f"replace {v} with {not v}")
        elif isinstance(v, (int, float)) and not isinstance(v, complex):
            new = v + 1
            self.add_expr(node, ast.Constant(new), "const", f"{v!r}{new!r}".replace(".", "p"),
                          f"replace {v!r} with {new!r}")
        elif v is None:
            self.add_expr(node, ast.Constant(True), "const", "NoneTrue", "replace None with True")


def generate(source: str) -> list[Mutant]:
    gen = Generator(source)
    tree = ast.parse(source)
    gen.visit(tree)
    original = ast.dump(tree)
    seen: dict[str, int] = {}
    trees = {original}
    out: list[Mutant] = []
    for m in gen.mutants:
        try:
            mutated = ast.dump(ast.parse(apply(source, m)))
        except SyntaxError:
            continue
        if mutated in trees:
            continue  # a no-op, or the same program as an earlier mutant (``return None`` twice, say)
        trees.add(mutated)
        key = f"{m.line}:{m.col}:{m.kind}:{m.detail}"
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n:
            m = Mutant(**{**m.__dict__, "index": n})
        out.append(m)
    return out


def apply(source: str, m: Mutant) -> str:
    """The source with ``m.replacement`` in place of the node's text (line numbers as the parser counts
    them: split at newlines only; columns are UTF-8 byte offsets)."""
    raw = source.encode()
    data = raw.split(b"\n")
    start = sum(len(x) + 1 for x in data[: m.line - 1]) + m.col
    end = sum(len(x) + 1 for x in data[: m.end_line - 1]) + m.end_col
    return (raw[:start] + m.replacement.encode() + raw[end:]).decode()


# -- running -----------------------------------------------------------------------------------


def drop_bytecode(module_path: str) -> None:
    directory, name = os.path.split(os.path.abspath(module_path))
    stem = os.path.splitext(name)[0]
    for pyc in glob.glob(os.path.join(directory, "__pycache__", f"{stem}.*.pyc")):
        try:
            os.unlink(pyc)
        except OSError:
            pass


def backup_path(module_path: str) -> str:
    return os.path.join(BACKUP_DIR, os.path.abspath(module_path).strip("/").replace("/", "__") + ".orig")


def restore_leftover(module_path: str) -> None:
    bak = backup_path(module_path)
    if os.path.exists(bak):
        with open(bak, "rb") as f:
            data = f.read()
        with open(module_path, "wb") as f:
            f.write(data)
        os.unlink(bak)
        drop_bytecode(module_path)
        print(f"restored {module_path} from a backup left by an interrupted run", file=sys.stderr)


@dataclass
class Result:
    mutant: Mutant
    outcome: str  # killed | survived | timeout | flaky (a kill that did not reproduce: counted as survived)
    seconds: float
    detail: str = ""


@dataclass
class Runner:
    module: str
    tests: list[str]
    timeout: float
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)

    confirm: bool = True
    reruns: int = 3  # full re-runs after kills that do not reproduce, before a mutant counts as flaky

    def command(self, tests: list[str] | None = None) -> list[str]:
        return [self.python, "-m", "pytest", "-q", "-x", "-rfE", "-p", "no:cacheprovider", *(tests or self.tests)]

    def run_tests(self, tests: list[str] | None = None) -> tuple[str, float, str]:
        start = time.monotonic()
        proc = subprocess.Popen(self.command(tests), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **self.env},
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            return "timeout", time.monotonic() - start, ""
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise
        elapsed = time.monotonic() - start
        text = out.decode(errors="replace").strip().splitlines()
        failed = [ln for ln in text if ln.startswith(("FAILED ", "ERROR "))]  # which test noticed the mutant
        detail = failed[0] if failed else (text[-1] if text else "")
        return ("survived" if proc.returncode == 0 else "killed"), elapsed, detail

    def run_mutant(self, original: str, m: Mutant) -> Result:
        mutated = apply(original, m)
        try:
            with open(self.module, "w", encoding="utf-8") as f:
                f.write(mutated)
            drop_bytecode(self.module)
            outcome, seconds, detail = self.run_tests()
            for _ in range(self.reruns):
                node = failing_test(detail)
                if outcome != "killed" or not self.confirm or not node:
                    break
                # A kill counts only if the test that failed fails again on its own: tests that talk to
                # sockets can fail under load, and such a failure says nothing about the mutant. When it
                # does not, the whole run is repeated (with -x a flaky test may hide a later, real kill).
                again, more, _ = self.run_tests([node])
                seconds += more
                if again != "survived":
                    break
                first = detail
                outcome, more, detail = self.run_tests()
                seconds += more
                if outcome == "survived":
                    outcome, detail = "flaky", f"{first} (passed when re-run alone and in a full re-run)"
            else:
                if outcome == "killed" and self.confirm and failing_test(detail):
                    outcome, detail = "flaky", f"{detail} (kills that never reproduced)"
        finally:
            with open(self.module, "w", encoding="utf-8") as f:
                f.write(original)
            drop_bytecode(self.module)
        return Result(m, outcome, seconds, detail)


def failing_test(detail: str) -> str | None:
    """The node id in a pytest summary line ``FAILED tests/x.py::test_y - message`` (None for others)."""
    if not detail.startswith("FAILED "):
        return None
    return detail[len("FAILED "):].split(" - ", 1)[0].strip() or None


def read_equivalents(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    if not os.path.exists(path):
        return {}
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            # split at the first blank: ids may hold "--" themselves (``L12C7-bin--+``: '-' -> '+')
            ident, _, rest = line.partition(" ")
            sep, reason = rest.strip()[:2], rest.strip()[2:]
            if sep != "--" or not reason.strip():
                raise SystemExit(f"{path}:{n}: expected 'ID  -- reason', got {line!r}")
            out[ident] = reason.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--module", required=True, help="the module to mutate, e.g. runtime/core/journal.py")
    p.add_argument("--tests", required=True, nargs="+", help="test files run for each mutant")
    p.add_argument("--sample", type=int, default=150, help="how many mutants to sample (default 150; 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--equivalent", help="file of survivor ids judged equivalent ('ID  -- reason' per line)")
    p.add_argument("--timeout", type=float, help="per-mutant timeout in s (default: 4 x the clean run + 10)")
    p.add_argument("--only", action="append", default=[], help="run only this mutant id (repeatable)")
    p.add_argument("--list", action="store_true", help="print the sampled mutants and exit")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs pytest")
    p.add_argument("--no-confirm", action="store_true",
                   help="count every failing run as a kill (default: the failing test must fail again alone)")
    args = p.parse_args(argv)

    module = args.module
    restore_leftover(module)
    with open(module, encoding="utf-8") as f:
        original = f.read()
    everything = generate(original)
    if args.only:
        by_id = {m.id: m for m in everything}
        missing = [i for i in args.only if i not in by_id]
        if missing:
            raise SystemExit(f"unknown mutant ids: {', '.join(missing)}")
        sample = [by_id[i] for i in args.only]
    elif args.sample and args.sample < len(everything):
        sample = random.Random(args.seed).sample(everything, args.sample)
    else:
        sample = list(everything)
    sample.sort(key=lambda m: (m.line, m.col, m.kind, m.detail, m.index))
    equivalents = read_equivalents(args.equivalent)
    print(f"{module}: {len(everything)} mutants, {len(sample)} sampled (seed {args.seed})", flush=True)
    if args.list:
        for m in sample:
            print(f"{module}:{m.line}: {m.description}  [{m.id}]")
        return 0

    runner = Runner(module, args.tests, timeout=args.timeout or 0, python=args.python, confirm=not args.no_confirm)
    runner.timeout = 600
    outcome, clean, detail = runner.run_tests()
    if outcome != "survived":
        print(f"the tests fail without any mutation ({detail}); nothing measured", file=sys.stderr)
        return 2
    runner.timeout = args.timeout or (4 * clean + 10)
    print(f"clean run {clean:.1f}s; timeout per mutant {runner.timeout:.0f}s", flush=True)

    os.makedirs(BACKUP_DIR, exist_ok=True)
    bak = backup_path(module)
    with open(bak, "w", encoding="utf-8") as f:
        f.write(original)

    def on_term(signum, frame):  # turn SIGTERM into an exception so that `finally` restores the file
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    results: list[Result] = []
    try:
        for i, m in enumerate(sample, 1):
            r = runner.run_mutant(original, m)
            results.append(r)
            print(f"[{i:3d}/{len(sample)}] {r.outcome:8s} {r.seconds:5.1f}s  {module}:{m.line}: {m.description}",
                  flush=True)
    except KeyboardInterrupt:
        print("interrupted; the original module is restored", file=sys.stderr)
        return 130
    finally:
        with open(module, "w", encoding="utf-8") as f:
            f.write(original)
        drop_bytecode(module)
        os.unlink(bak)
        signal.signal(signal.SIGTERM, old)

    killed = [r for r in results if r.outcome == "killed"]
    timeouts = [r for r in results if r.outcome == "timeout"]
    survived = [r for r in results if r.outcome in ("survived", "flaky")]
    flaky = [r for r in results if r.outcome == "flaky"]
    equivalent = [r for r in survived if r.mutant.id in equivalents]
    live = [r for r in survived if r.mutant.id not in equivalents]
    wrongly = [r for r in killed + timeouts if r.mutant.id in equivalents]
    total = len(results) - len(equivalent)
    score = 100.0 * (len(killed) + len(timeouts)) / total if total else 100.0
    raw = 100.0 * (len(killed) + len(timeouts)) / len(results) if results else 100.0

    print()
    print(f"module:     {module}")
    print(f"tests:      {' '.join(args.tests)}")
    print(f"mutants:    {len(results)} (seed {args.seed}, of {len(everything)})")
    print(f"killed:     {len(killed)}")
    print(f"timeout:    {len(timeouts)}")
    print(f"survived:   {len(survived)} ({len(equivalent)} listed as equivalent, {len(flaky)} after a kill that "
          f"did not reproduce)")
    print(f"raw score:  {raw:.1f} %")
    print(f"score:      {score:.1f} % (equivalent mutants set aside)")
    if live:
        print("survivors:")
        for r in live:
            print(f"  {module}:{r.mutant.line}: {r.mutant.description}  [{r.mutant.id}]"
                  + (f"  (flaky: {r.detail})" if r.outcome == "flaky" else ""))
    if equivalent:
        print("equivalent (set aside):")
        for r in equivalent:
            print(f"  {module}:{r.mutant.line}: {r.mutant.description}  [{r.mutant.id}] -- {equivalents[r.mutant.id]}")
    if wrongly:
        print("listed as equivalent but killed (remove them from the list):")
        for r in wrongly:
            print(f"  {module}:{r.mutant.line}: {r.mutant.description}  [{r.mutant.id}]")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"module": module, "tests": args.tests, "seed": args.seed, "sampled": len(results),
                       "killed": len(killed), "timeout": len(timeouts), "survived": len(survived), "flaky": len(flaky),
                       "equivalent": len(equivalent), "score": score, "raw_score": raw,
                       "results": [{"id": r.mutant.id, "line": r.mutant.line, "description": r.mutant.description,
                                    "outcome": r.outcome, "seconds": round(r.seconds, 2), "detail": r.detail}
                                   for r in results]},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
