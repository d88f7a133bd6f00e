//! Builds the C function with a `.cold` part (`csrc/cold.c`) as a C
//! library is built: `-O2`, exceptions and unwind tables, no frame pointer,
//! line tables.
fn main() {
    println!("cargo:rerun-if-changed=csrc/cold.c");
    cc::Build::new()
        .file("csrc/cold.c")
        .opt_level(2)
        .debug(true)
        .force_frame_pointer(false)
        .flag("-fexceptions")
        .flag("-fasynchronous-unwind-tables")
        .compile("matrix_cold");
}
