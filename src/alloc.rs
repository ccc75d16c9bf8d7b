//! The memory allocator's settings for a long-running service.

/// Caps glibc's malloc at two arenas (unless `MALLOC_ARENA_MAX` is set).
///
/// By default glibc gives threads up to eight arenas per core, and memory
/// freed in one arena is not reused by another: under CDC's short-lived
/// batch buffers the service's RSS crept about 0.2 MB a minute while the
/// live heap grew a tenth of that (jemalloc profile, `/proc/PID/smaps`:
/// the growth was in anonymous arena mappings). With two arenas the same
/// soak rose 0.09 MB a minute (`docs/soak.md`). Call it before the runtime
/// starts its threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
