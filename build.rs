//! For the static x86-64 musl build (the one the image ships), `native/memcpy.c` takes the
//! place of musl's `memcpy` in the binary (`--wrap` sends every call to it, musl's own
//! included): musl's costs ~35 ns per copy whatever its size, ~10 % of a refresh
//! (BENCHMARKS.md, issue 17). Other targets keep their C library's.

fn main() {
    println!("cargo::rerun-if-changed=native/memcpy.c");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-musl" {
        return;
    }
    cc::Build::new()
        .file("native/memcpy.c")
        // Fixed: the release profile's "s" must not turn the short copies into calls.
        .opt_level(2)
        .flag("-fno-builtin")
        .compile("token_agent_memcpy");
    println!("cargo::rustc-link-arg-bins=-Wl,--wrap=memcpy");
}
