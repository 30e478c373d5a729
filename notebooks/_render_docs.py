"""Render the documentation site from notebooks/ without Quarto: `make docs` -> _docs/index.html.

The sources are the ones `nbdev_docs` reads: every notebook, the `.qmd` pages beside them, and the
navigation in `sidebar.yml` (settings.ini: custom_sidebar = True). Quarto, which `nbdev_docs` needs, is
a binary download that the `quarto-cli` package fetches from GitHub when it is installed, so it cannot
be installed where only package registries are reachable. This script runs nbdev's own notebook
processors (hidden cells dropped, exported code shown as its API documentation, directives honoured),
then renders each page with nbconvert's HTML exporter into one static site with the same file names
`nbdev_docs` would write (`00_errors.ipynb` -> `errors.html`). It executes no notebook: the API blocks
come from `show_doc` on the exported objects, imported from mlplat/.

The file name starts with `_` so nbdev's notebook globbing (export, test, clean, docs) skips it.
"""
from __future__ import annotations

import argparse, html, importlib, re, shutil, sys, time, warnings
from pathlib import Path

import yaml

_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.S)
_OPTION = re.compile(r"^#\|\s*([\w-]+):\s*(.*?)\s*$")
_DEFAULT_EXP = re.compile(r"^\s*#\|\s*default_exp\s+(\S+)", re.M)
_SHOW_DOC = re.compile(r"^show_doc\(([\w.]+)\)\s*$", re.M)
_SOURCE_LINK = re.compile(r"^\[source\]\([^)]*\)\{[^}]*\}\s*$", re.M)   # nbdev's GitHub link, in Quarto syntax
_HREF = re.compile(r'href="([^"#]+)(#[^"]*)?"')


def sidebar_pages(src: Path) -> list[tuple[str | None, list[str]]]:
    "The navigation as (section title or None, [source file names]), in the order of `sidebar.yml`."
    contents = yaml.safe_load((src / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    out, loose = [], []
    for item in contents:
        if isinstance(item, str): loose.append(item)
        else:
            if loose: out.append((None, loose)); loose = []
            out.append((item["section"], list(item["contents"])))
    if loose: out.append((None, loose))
    return out


def output_name(source: str) -> str:
    "The page `nbdev_docs` writes for a source: the notebook's name without its number prefix, as .html."
    stem = Path(source).stem
    if source.endswith(".ipynb"): stem = re.sub(r"^\d+[a-z]?_", "", stem)
    return stem + ".html"


class _ShowDocs:
    "nbdev processor: fill the `show_doc(X)` cells nbdev adds after exported code, without running the notebook."
    def __init__(self, nb): self.nb, self.ns = nb, None

    def _namespace(self):
        if self.ns is None:
            code = "\n".join(c.source for c in self.nb.cells if c.cell_type == "code" and c.source)
            m = _DEFAULT_EXP.search(code)
            self.ns = vars(importlib.import_module(f"mlplat.{m.group(1)}")) if m else {}
        return self.ns

    def __call__(self, cell):
        from nbdev.showdoc import show_doc
        m = _SHOW_DOC.search(cell.source or "") if cell.cell_type == "code" else None
        if not m: return
        head, *rest = m.group(1).split(".")
        obj = self._namespace().get(head)
        for attr in rest: obj = getattr(obj, attr, None)
        if obj is None: return cell.__setitem__("source", "")
        md = _SOURCE_LINK.sub("", show_doc(obj)._repr_markdown_())
        cell["outputs"] = [{"output_type": "display_data", "metadata": {},
                            "data": {"text/markdown": md.splitlines(keepends=True)}}]


def process_notebook(path: Path):
    "The notebook as `nbdev_docs` would hand it to Quarto (nbdev's processors), as an nbformat notebook + front matter."
    import nbformat
    from execnb.nbio import nb2str, read_nb
    from nbdev.process import NBProcessor
    from nbdev.processors import FilterDefaults
    nb = read_nb(path)
    procs = [(_ShowDocs if getattr(p, "__name__", "") == "exec_show_docs" else p) for p in FilterDefaults().base_procs()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NBProcessor(nb=nb, procs=procs).process()
    return _quarto_options(nbformat.reads(nb2str(nb), as_version=4))


def _quarto_options(nb):
    "Apply the Quarto cell options nbdev leaves (`#| echo: false`, `#| output: asis`...) and take the front matter."
    front, cells = {}, []
    for cell in nb.cells:
        src = cell.source
        if cell.cell_type == "raw":
            m = _FRONT.match(src + "\n")
            if m: front.update(yaml.safe_load(m.group(1)) or {})
            continue
        if cell.cell_type == "markdown":
            cell.source = "\n".join(l for l in src.splitlines() if not l.startswith(":::"))
            if cell.source.strip(): cells.append(cell)
            continue
        lines, opts = src.splitlines(), {}
        while lines and _OPTION.match(lines[0]):
            k, v = _OPTION.match(lines.pop(0)).groups(); opts[k] = v.lower()
        cell.source = "\n".join(lines).strip("\n")
        if opts.get("include") == "false" or not (cell.source or cell.get("outputs")): continue
        tags = cell.metadata.setdefault("tags", [])
        if opts.get("echo") == "false" or not cell.source: tags.append("remove_input")
        if opts.get("output") == "false": tags.append("remove_output")
        cells.append(cell)
    nb.cells = cells
    return nb, front


def process_page(path: Path):
    "A .qmd/.md page: its markdown as a one-cell notebook, and its front matter."
    import nbformat
    text = path.read_text()
    m = _FRONT.match(text)
    front = yaml.safe_load(m.group(1)) if m else {}
    body = text[m.end():] if m else text
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(body)]), front


_CSS = """
body { margin: 0; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; display: flex; }
nav { width: 17rem; flex: none; height: 100vh; position: sticky; top: 0; overflow-y: auto; padding: 1rem;
      box-sizing: border-box; background: #f6f8fa; border-right: 1px solid #d0d7de; font-size: 14px; }
nav .site { font-weight: 700; font-size: 18px; display: block; margin-bottom: .8rem; }
nav h4 { margin: 1rem 0 .3rem; font-size: 12px; text-transform: uppercase; color: #59636e; }
nav a { display: block; padding: .15rem .4rem; color: #1f2328; text-decoration: none; border-radius: 4px; }
nav a:hover, nav a.here { background: #dde4ea; }
main { max-width: 60rem; padding: 1.5rem 2.5rem 4rem; min-width: 0; }
.description { color: #59636e; font-size: 18px; border-left: 3px solid #d0d7de; padding-left: .8rem; }
pre, code { font: 13.5px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; }
pre { background: #f6f8fa; padding: .7rem .9rem; overflow-x: auto; border-radius: 6px; }
.output_area pre { background: #fff; border: 1px solid #eaeef2; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 14px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .3rem .55rem; vertical-align: top; text-align: left; }
th { background: #f6f8fa; }
.prompt { display: none; }
.cell { margin: .6rem 0; }
.anchor-link { visibility: hidden; text-decoration: none; margin-left: .3rem; color: #8c959f; }
h1:hover .anchor-link, h2:hover .anchor-link, h3:hover .anchor-link, h4:hover .anchor-link { visibility: visible; }
"""


def _inline(text: str) -> str:
    "One line of markdown (a page's description) as inline HTML."
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    return re.sub(r"^<p>|</p>\s*$", "", markdown2html_mistune(text).strip())


def _nav(sections, titles, here: str) -> str:
    out = []
    for title, files in sections:
        if title: out.append(f"<h4>{html.escape(title)}</h4>")
        for f in files:
            page = output_name(f)
            cls = ' class="here"' if page == here else ""
            out.append(f'<a href="{page}"{cls}>{html.escape(titles.get(f, f))}</a>')
    return "\n".join(out)


def _links(body: str, pages: dict, doc_url: str) -> str:
    "Links between pages as Quarto writes them: a source name (`users.qmd`, `03_identity.ipynb`) -> its .html."
    body = body.replace(doc_url, "")
    def fix(m):
        target, anchor = m.group(1), m.group(2) or ""
        name = Path(target).name
        return f'href="{pages[name]}{anchor}"' if name in pages and "://" not in target else m.group(0)
    return _HREF.sub(fix, body)


def render(src: Path, out: Path, title: str, doc_url: str) -> list[Path]:
    "Render every page of `sidebar.yml` into `out`; returns the pages written."
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from pygments.formatters import HtmlFormatter
    sections = sidebar_pages(src)
    files = [f for _, fs in sections for f in fs]
    missing = [f for f in files if not (src / f).exists()]
    if missing: raise SystemExit(f"sidebar.yml lists files that do not exist in {src}: {', '.join(missing)}")
    exporter = HTMLExporter(template_name="basic")
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"},
                                                         remove_all_outputs_tags={"remove_output"}), enabled=True)
    rendered, titles = {}, {}
    for f in files:
        nb, front = process_notebook(src / f) if f.endswith(".ipynb") else process_page(src / f)
        titles[f] = str(front.get("title", Path(f).stem))
        rendered[f] = (exporter.from_notebook_node(nb)[0], front)
    pages = {f: output_name(f) for f in files}
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "style.css").write_text(_CSS + HtmlFormatter().get_style_defs(".highlight"))
    written = []
    for f, (body, front) in rendered.items():
        desc = front.get("description")
        head = f"<h1>{html.escape(titles[f])}</h1>" + (f'<p class="description">{_inline(str(desc))}</p>' if desc else "")
        page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(titles[f])} – {html.escape(title)}</title>"
                f'<link rel="stylesheet" href="style.css"></head>\n<body><nav><a class="site" href="index.html">'
                f"{html.escape(title)}</a>\n{_nav(sections, titles, pages[f])}</nav>\n"
                f"<main>{head}\n{_links(body, pages, doc_url)}</main></body></html>\n")
        (out / pages[f]).write_text(page)
        written.append(out / pages[f])
    return written


def main(argv=None):
    from nbdev.config import get_config
    cfg = get_config()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=cfg.doc_path, help=f"output folder (default: {cfg.doc_path})")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    pages = render(cfg.nbs_path, args.out.resolve(), cfg.title, f"{cfg.doc_host}{cfg.doc_baseurl}/")
    print(f"docs: {len(pages)} pages in {args.out} ({time.perf_counter() - t:.0f} s); open {args.out / 'index.html'}")


if __name__ == "__main__":
    sys.exit(main())
