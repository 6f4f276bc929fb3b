"""Build hook for the optional C accelerator; all other metadata is in pyproject.toml.

``optional=True``: where no C compiler is available the install goes on and the package
runs on its pure-Python paths (set PITCHEY_TRACE_PURE_PYTHON=1 to force them anyway).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pitchey_trace._speedups",
            sources=["pitchey_trace/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
