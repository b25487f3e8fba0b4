//! `native/memcpy.c`, the `memcpy` the static musl build links in place of musl's (build.rs):
//! its self-test, built at build.rs's optimization level, checks every size up to 600 bytes at
//! every alignment against a byte-by-byte copy. Every copy the shipped agent makes runs
//! through it, so it is checked on its own, not only through the image's tests.

#![cfg(target_arch = "x86_64")]

use std::process::Command;

#[test]
fn the_static_builds_memcpy_copies_every_size_and_alignment_exactly() {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/native/memcpy.c");
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("memcpy-self-test");
    // musl-gcc where it is installed (the static build's compiler), else the C compiler the
    // crates' C parts are built with: the code is plain C and x86-64 `rep movsb`.
    let compiler = ["musl-gcc", "cc"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("a C compiler (cc) is installed: ring's C parts need one too");
    let built = Command::new(compiler)
        .args(["-O2", "-fno-builtin", "-DMEMCPY_SELF_TEST", source, "-o"])
        .arg(&program)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{compiler} {source}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&program).output().unwrap();
    let said = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "the self-test failed: {said}");
    assert_eq!(said.trim(), "153856 copies checked");
}
