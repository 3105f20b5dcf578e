"""clipdef: the tested package behind the executable book on backdoors in CLIP.

Importing clipdef has no side effects: it downloads nothing, seeds nothing and styles nothing.
Submodules are imported on demand (``import clipdef.world``) so that ``import clipdef`` stays cheap.
"""

__version__ = "0.3.0"
