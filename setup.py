"""Packaging for mlplat: everything is read from settings.ini (nbdev 2), no pkg_resources."""
import ast
from configparser import ConfigParser
from pathlib import Path

import setuptools

HERE = Path(__file__).parent
cfg = ConfigParser(delimiters=["="])
cfg.read(HERE / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]


def _reqs(key):
    return cfg.get(key, "").split()


def _data_files():
    """Templates (share/mlplat/templates), and the JupyterLab extension and its server config once it is built."""
    files = []
    labext = HERE / "mlplat" / "labextension"
    if labext.is_dir():
        for path in sorted(p for p in labext.rglob("*") if p.is_file()):
            rel = path.relative_to(labext).parent
            files.append((f"share/jupyter/labextensions/mlplat/{rel}".rstrip("/."), [str(path.relative_to(HERE))]))
    templates = HERE / "templates"
    for path in sorted(p for p in templates.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(templates).parent
        files.append((f"share/mlplat/templates/{rel}".rstrip("/."), [str(path.relative_to(HERE))]))
    server_cfg = HERE / "jupyter-config" / "jupyter_server_config.d" / "mlplat.json"
    if server_cfg.is_file():
        files.append(("etc/jupyter/jupyter_server_config.d", [str(server_cfg.relative_to(HERE))]))
    return files


def _plugin_entry_points():
    """mlplat's built-in plugins as entry points. mlplat/plugins.py's BUILTINS is the one list; it is read, not
    imported (a build has none of mlplat's dependencies), and mlplat works without these from a plain checkout."""
    tree = ast.parse((HERE / "mlplat" / "plugins.py").read_text(encoding="utf-8"))
    builtins = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "BUILTINS" for t in node.targets))
    return {group: [f"{name} = {target}" for name, target in plugins.items()] for group, plugins in builtins.items()}


readme = HERE / "README.md"
setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license="Apache-2.0",
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=["mlplat", "mlplat.*"]),
    include_package_data=True,
    package_data={"mlplat": ["resources/*", "resources/**/*"]},
    install_requires=_reqs("requirements"),
    extras_require={
        "dev": _reqs("dev_requirements"),
        "postgres": _reqs("postgres_requirements"),
        "ray": _reqs("ray_requirements"),
        "spark": _reqs("spark_requirements"),
    },
    entry_points={"console_scripts": cfg["console_scripts"].split(), "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
                  **_plugin_entry_points()},
    data_files=_data_files(),
    zip_safe=False,
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Framework :: Jupyter :: JupyterLab :: 4",
        "License :: OSI Approved :: Apache Software License",
    ],
)
