"""The config: its Structs (``model``), the loader that collects every
problem (``load``), and the checks of the files and URLs it names
(``files``). Nothing here starts or connects anything: ``relay check``
loads no event loop and no store engine.
"""
