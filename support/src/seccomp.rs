//! A seccomp filter that refuses chosen system calls, as a hardened service's
//! unit or a container's profile does (Linux on x86_64). Shared by the tests
//! and the evidence matrix.

/// Installs a seccomp filter on every thread of this process that makes
/// each listed system call fail with its errno (as a hardened systemd unit or
/// a container's profile does). For a process of its own: it cannot be
/// undone.
pub fn deny(denied: &[(libc::c_long, i32)]) {
    const SECCOMP_SET_MODE_FILTER: libc::c_long = 1;
    const SECCOMP_FILTER_FLAG_TSYNC: libc::c_long = 1;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    // seccomp_data: nr at offset 0, arch at offset 4.
    let mut program = vec![
        stmt(load, 4),
        jump(AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, SECCOMP_RET_ALLOW),
        stmt(load, 0),
    ];
    for &(nr, errno) in denied {
        program.push(jump(nr as u32, 0, 1));
        program.push(stmt(ret, SECCOMP_RET_ERRNO | (errno as u32 & 0xffff)));
    }
    program.push(stmt(ret, SECCOMP_RET_ALLOW));
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: prctl and seccomp with a valid, fully built filter program.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let rc = libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_TSYNC,
            &prog as *const libc::sock_fprog,
        );
        assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}
