"""The browser apps' ES modules (static/js, no build step) fit together (issue 20, item 8).

The adversary: a module split or a moved helper that leaves an `import { name } from "./x.js"`
pointing at a file that no longer exports `name`. The browser refuses the whole page for it
(a SyntaxError at link time, nothing rendered), and only the browser tests of that page would
notice, minutes later. Read from the source, so a new module is checked without being listed.
"""

from __future__ import annotations

import re
from pathlib import Path

JS = Path(__file__).resolve().parents[2] / "static" / "js"
IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"(\.[^"]+)";', re.M)
EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:function\*?|class|const|let)\s+([\w$]+)", re.M)
EXPORT_LIST = re.compile(r"^export\s*\{([^}]*)\}", re.M)


def exports(path: Path) -> set[str]:
    text = path.read_text()
    names = set(EXPORT.findall(text))
    for group in EXPORT_LIST.findall(text):
        names |= {n.split(" as ")[-1].strip() for n in group.split(",") if n.strip()}
    return names


def broken_imports(root: Path) -> list[str]:
    """'importer: name from ./target.js' for every imported name its target lacks."""
    found = []
    for path in sorted(root.rglob("*.js")):
        for names, target in IMPORT.findall(path.read_text()):
            source = (path.parent / target).resolve()
            have = exports(source) if source.exists() else set()
            for name in (n.split(" as ")[0].strip() for n in names.split(",")):
                if name and name not in have:
                    found.append(f"{path.relative_to(root)}: {name} from {target}")
    return found


def test_every_imported_name_is_exported_by_its_module(tmp_path: Path) -> None:
    assert broken_imports(JS) == []
    # The check can fail: a helper moved out of the module a page still imports it from.
    (tmp_path / "dom.js").write_text("export const $ = (id) => id;\nexport function h() {}\n")
    (tmp_path / "page.js").write_text('import { $, h, say } from "./dom.js";\n'
                                      'import { api } from "./api.js";\n')
    assert broken_imports(tmp_path) == ["page.js: say from ./dom.js", "page.js: api from ./api.js"]


# A page-wide mutable `state` object that every function reaches (issue 20's finding about
# family.js): screens get what they share in their constructors instead (docs/clients.md,
# "How the apps are built").
GLOBAL_STATE = re.compile(r"^(?:const|let|var)\s+state\s*=", re.M)


def global_state(root: Path) -> list[str]:
    return [str(path.relative_to(root)) for path in sorted(root.rglob("*.js"))
            if GLOBAL_STATE.search(path.read_text())]


def test_no_page_keeps_a_global_state_object(tmp_path: Path) -> None:
    assert global_state(JS) == []
    (tmp_path / "page.js").write_text("const state = { me: null, balance: 0 };\n")
    assert global_state(tmp_path) == ["page.js"], "the scan finds one"
