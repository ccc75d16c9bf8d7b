//! The memory allocator's settings for a long-running service.

/// Caps glibc's malloc at two arenas (unless `MALLOC_ARENA_MAX` is set)
/// and fixes its mmap threshold at 128 KiB (unless
/// `MALLOC_MMAP_THRESHOLD_` is set).
///
/// By default glibc gives threads up to eight arenas per core, and memory
/// freed in one arena is not reused by another: under CDC's short-lived
/// batch buffers the service's RSS crept about 0.2 MB a minute while the
/// live heap grew a tenth of that (jemalloc profile, `/proc/PID/smaps`:
/// the growth was in anonymous arena mappings). With two arenas the same
/// soak rose 0.09 MB a minute (`docs/soak.md`).
///
/// glibc also raises its mmap threshold to the largest block freed so far
/// (up to 32 MiB), so after the first large ClickHouse insert buffer
/// (64 KiB to 4 MiB) the later ones come from the heap, where freeing them
/// leaves holes the heap keeps. A fixed threshold keeps large buffers in
/// mmaps of their own, returned on free. Call it before the runtime starts
/// its threads.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |env: &str, param: libc::c_int, value: libc::c_int| {
            if std::env::var_os(env).is_none() {
                // SAFETY: mallopt only sets an allocator parameter; it is
                // called before any other thread exists.
                unsafe {
                    libc::mallopt(param, value);
                }
            }
        };
        set("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2);
        set("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}
