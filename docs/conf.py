"""Sphinx configuration of the conveyor documentation.

The API pages import the installed ``conveyor`` package (the compiled core
included), so build the docs with the interpreter it is installed in::

    python -m sphinx -W --keep-going -q -b html docs docs/_build/html
"""

import conveyor

project = "conveyor"
author = "the conveyor developers"
copyright = "the conveyor developers"
release = conveyor.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
]

exclude_patterns = ["_build"]
templates_path = []
html_static_path = []
html_theme = "alabaster"
html_theme_options = {
    "description": "Message-driven programs over MPI",
    "fixed_sidebar": True,
}

# Single backticks name a Python object (`Future`, `Messenger.send`).
default_role = "py:obj"
primary_domain = "py"

autodoc_member_order = "bysource"
autodoc_typehints = "none"

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()


# A default that is a private sentinel (``payload=<object object>``, meaning
# "not given") reads as ``None``, which is what an omitted payload carries.
# (Message, Sender and Future, made by a Messenger, get an empty signature in
# api.rst.)
def _public_signature(app, what, name, obj, options, signature, return_annotation):
    if signature and "=<object object>" in signature:
        return signature.replace("=<object object>", "=None"), return_annotation
    return None


def setup(app):
    app.connect("autodoc-process-signature", _public_signature)
