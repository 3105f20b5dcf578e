"""A Sphinx extension for the book: each page lists every JavaScript file (or inline script) once.

Sphinx before 8.2 (Jupyter Book 1 pins 7.x) can register the same script twice — sphinx-thebe's and
sphinx-togglebutton's set-up scripts end up in every page two times, and the second copy throws
"Identifier 'THEBE_JS_URL' has already been declared" in the browser (sphinx-doc/sphinx#13402).
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "",
               tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
