"""`graphgrad cache`: where compiled programs are cached, how much room they take, and clearing."""

HELP = "show the compiled-code cache (location, entries, size, limit) or clear it"


def add_arguments(p):
    p.add_argument("--clear", action="store_true", help="delete every cached object and schedule")


def run(args):
    from runtime import cache
    d = cache.cache_dir()
    if args.clear:
        print(f"removed {cache.clear()} entries from {d}")
        return 0
    n, size = cache.usage()
    limit = cache.max_bytes()
    print(f"cache directory: {d}  ($GRAPHGRAD_CACHE_DIR)")
    print(f"entries: {n}, {size / 2**20:.1f} MB")
    print(f"limit: {f'{limit / 2**20:.0f} MB' if limit else 'none'}  ($GRAPHGRAD_CACHE_MAX_MB; "
          f"least recently used entries go first)")
    return 0
