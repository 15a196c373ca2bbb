"""Sphinx configuration of the conveyor documentation.

The API pages import the installed ``conveyor`` package (the compiled core
included), so build the docs with the interpreter it is installed in, through
``docs/build_docs.py`` (what ``make docs`` runs), which fails on any warning.
"""

import sys

import conveyor

project = "conveyor"
author = "the conveyor developers"
copyright = "the conveyor developers"
release = conveyor.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "numpydoc",
]

# Every cross-reference must resolve: a name that moved or a typo fails the
# build instead of turning silently into plain text.
nitpicky = True

# Links into the Python, numpy and mpi4py docs. The build must work offline
# (CI reaches PyPI and Debian only), so each inventory is a committed file
# and only the link targets point at the live sites. `make docs-inventories`
# refreshes them: Python's and mpi4py's are the objects.inv of Debian's
# python3.11-doc and python-mpi4py-doc packages; Debian has no numpy docs, so
# numpy's is compiled from _inventories/numpy.txt, a short list of names.
# A name missing from an inventory fails the nitpicky build, which says what
# to add.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", "_inventories/python.inv"),
    "numpy": ("https://numpy.org/doc/stable", "_inventories/numpy.inv"),
    "mpi4py": ("https://mpi4py.readthedocs.io/en/stable", "_inventories/mpi4py.inv"),
}

exclude_patterns = ["_build", "_inventories"]
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
# The types are read in the numpydoc sections ("int or Address"), and by
# tools from the annotations (py.typed). Not shown in signatures: there
# numpy's aliases expand into long unions of private classes (ArrayLike) and
# type variables and internal helpers (HandlerT, DriverScope) would show.
autodoc_typehints = "none"

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# The types in Parameters and Returns link to their docs ("numpy.ndarray",
# "Address", numpy's "array_like"); the words between them do not.
numpydoc_xref_param_type = True
numpydoc_xref_ignore = {"optional", "default", "of", "to", "or"}
# A public function or method without a section for each of its parameters
# (PR01-PR03, PR10), or that returns or yields a value without saying what
# (RT01, YD01), fails the build. Raises has no check: list what each raises.
numpydoc_validation_checks = {"PR01", "PR02", "PR03", "PR10", "RT01", "YD01"}
# Not checked: the constructors of objects conveyor makes (api.rst gives them
# an empty signature), whose parameters are internal; the remote errors,
# whose Attributes name their parameters; Copy and Move, which take the
# parameters Transfer documents.
numpydoc_validation_exclude = {
    r"^conveyor\.(Sender|Future|Stream|Store|Table|DistArray|Driver|ChunkRef|ActorRef|RankState)$",
    r"^conveyor\.(RemoteError|UnknownTagError)$",
    r"^conveyor\.(Copy|Move)$",
}


# A default that is a private sentinel (``payload=<object object>``, meaning
# "not given") reads as ``None``, which is what an omitted payload carries.
# (Message, Sender and Future, made by a Messenger, get an empty signature in
# api.rst.)
def _public_signature(app, what, name, obj, options, signature, return_annotation):
    if signature and "=<object object>" in signature:
        return signature.replace("=<object object>", "=None"), return_annotation
    return None


# A base class defined in a private module goes by its public name, the one
# the inventories know: concurrent.futures._base.CancelledError, a base of
# conveyor.CancelledError, is concurrent.futures.CancelledError.
def _public_bases(app, name, obj, options, bases):
    for i, base in enumerate(bases):
        public = base.__module__.split("._")[0]
        if (
            public != base.__module__
            and getattr(sys.modules.get(public), base.__qualname__, None) is base
        ):
            bases[i] = f":py:class:`{public}.{base.__qualname__}`"


def setup(app):
    app.connect("autodoc-process-signature", _public_signature)
    app.connect("autodoc-process-bases", _public_bases)
