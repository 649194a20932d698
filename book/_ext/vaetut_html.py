"""Small fixes to the HTML pages Jupyter Book writes.

sphinx-thebe registers its configuration script each time documents are read, so a page
can carry it twice, and the browser reports "Identifier 'THEBE_JS_URL' has already been
declared". Each script is kept once here (by file name and inline body).
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # the same inline script is registered with filename None and with ""
        key = (str(getattr(script, "filename", script) or ""),
               getattr(script, "attributes", {}).get("body"))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
