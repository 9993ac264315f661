"""The model backends, one module each; every `Potential` subclass defined here registers
itself (`mlipdiv.models.registry`). A new backend is one new module in this folder: a
subclass declaring its name, library, sizes and cutoff key, plus its tests. Modules here keep
their library's import inside functions, so listing the backends stays cheap."""
