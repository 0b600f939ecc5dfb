"""MkDocs hook: `<!-- config-reference -->` in a page becomes the tables of every config
key and every layer argument, read from the rules the validator itself uses
(cnnrun/config.py's SECTIONS, each layer's `args`), so the page cannot drift from the code."""

import inspect

MARKER = "<!-- config-reference -->"


def _default(value):
    if value is inspect.Parameter.empty:
        return "required"
    return "null" if value is None else f"`{value!r}`".replace("True", "true").replace("False", "false")


def config_reference():
    from cnnrun.config import ADVERSARIAL, REQUIRED, SECTIONS, TOP_LEVEL, TRACK
    from cnnrun.nn.network import LAYERS

    def rows(rules):
        return [f"| `{key}` | {what} | {'required' if default is REQUIRED else _default(default)} |"
                for key, ((what, _), default) in rules.items()]

    out = ["### Keys", "", "| key | value | default |", "|---|---|---|"]
    out += rows(TOP_LEVEL)
    for section, rules in SECTIONS.items():
        out += [r.replace("| `", f"| `{section}.", 1) for r in rows(rules)]
    out += ["", "`train.adversarial` (null, or a mapping of these):", "", "| key | value | default |", "|---|---|---|"]
    out += rows(ADVERSARIAL)
    out += ["", "`track` (null, or a mapping of these; the `--mlflow` and `--tensorboard` flags win):", "",
            "| key | value | default |", "|---|---|---|"]
    out += rows(TRACK)
    out += ["", "### Layers", ""]
    for kind, cls in LAYERS.items():
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        out += [f"**`{kind}`** (`{cls.__module__}.{cls.__name__}`): {doc}", ""]
        params = inspect.signature(cls).parameters
        if params:
            out += ["| argument | value | default |", "|---|---|---|"]
            out += [f"| `{name}` | {cls.args[name][0]} | {_default(p.default)} |" for name, p in params.items()]
            out += [""]
        else:
            out += ["No arguments: `- " + kind + "`.", ""]
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    return markdown.replace(MARKER, config_reference()) if MARKER in markdown else markdown
