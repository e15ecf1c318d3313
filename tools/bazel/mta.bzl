"""Project macros: every C++ target goes through these so flags stay in one place."""

MTA_COPTS = [
    "-std=c++20",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unused-parameter",
    "-Wno-missing-field-initializers",
]

def mta_cc_library(name, deps = [], copts = [], **kwargs):
    native.cc_library(
        name = name,
        copts = MTA_COPTS + copts,
        deps = deps + ["//third_party:absl"],
        **kwargs
    )

def mta_cc_binary(name, deps = [], copts = [], **kwargs):
    native.cc_binary(
        name = name,
        copts = MTA_COPTS + copts,
        deps = deps + ["//third_party:absl"],
        **kwargs
    )

def mta_cc_test(name, deps = [], copts = [], **kwargs):
    native.cc_test(
        name = name,
        copts = MTA_COPTS + copts,
        deps = deps + ["//third_party:absl", "//third_party:gtest_main"],
        **kwargs
    )

def mta_cc_benchmark(name, deps = [], copts = [], **kwargs):
    """A Google Benchmark binary plus a smoke test that runs each benchmark once."""
    native.cc_binary(
        name = name,
        copts = MTA_COPTS + copts,
        deps = deps + ["//third_party:absl", "//third_party:benchmark"],
        **kwargs
    )
    native.sh_test(
        name = name + "_smoke_test",
        srcs = ["//tools/bazel:run_benchmark_once.sh"],
        args = ["$(location :%s)" % name],
        data = [":" + name],
    )
