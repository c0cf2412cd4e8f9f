/*
 * dirty.c: /init of the migration lab's running guest (scripts/guest.sh builds it into an
 * initramfs; scripts/migrate.sh boots it).
 *
 * Fills a working set of lmas_ws MiB with pseudo-random pages, then loops forever:
 *   - dirties pages at lmas_rate MiB/s (random page, new generation, new content), paced by
 *     CLOCK_MONOTONIC;
 *   - between those writes, re-checks pages in order against the content their generation
 *     implies, and after each full pass prints one line on the console:
 *         lmas-dirty: pass N ok=PAGES bad=B dirtied=D
 *     and for every wrong page, at once:
 *         lmas-dirty: BAD page I gen G word W: got X want Y
 * So after a live migration the destination's console shows whether every page survived.
 * Parameters come as environment variables from the kernel command line (the kernel passes
 * unknown NAME=VALUE words to init): lmas_ws (MiB, default 256), lmas_rate (MiB/s, default 32;
 * 0 = no dirtying).
 *
 * It is PID 1: it never exits (the kernel would panic).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)

static uint64_t *mem;     /* the working set */
static uint32_t *gen;     /* generation of each page */
static uint64_t npages;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* splitmix64: the content of word w of page i at generation g. */
static inline uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline uint64_t seed_of(uint64_t i, uint32_t g)
{
    return mix((i << 24) ^ g);
}

static void fill_page(uint64_t i)
{
    uint64_t *p = mem + i * WORDS;
    uint64_t s = seed_of(i, gen[i]);
    p[0] = i;
    p[1] = gen[i];
    for (unsigned w = 2; w < WORDS; w++)
        p[w] = s = s * 6364136223846793005ull + 1442695040888963407ull;
}

/* Returns the index of the first wrong word, or -1. */
static int check_page(uint64_t i, uint64_t *got, uint64_t *want)
{
    const volatile uint64_t *p = mem + i * WORDS;
    uint64_t s = seed_of(i, gen[i]);
    if (p[0] != i) { *got = p[0]; *want = i; return 0; }
    if (p[1] != gen[i]) { *got = p[1]; *want = gen[i]; return 1; }
    for (unsigned w = 2; w < WORDS; w++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        if (p[w] != s) { *got = p[w]; *want = s; return (int)w; }
    }
    return -1;
}

static void say(const char *fmt, unsigned long long a, unsigned long long b,
                unsigned long long c, unsigned long long d, unsigned long long e)
{
    char line[256];
    int n = snprintf(line, sizeof line, fmt, a, b, c, d, e);
    if (n > 0)
        (void)!write(1, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static unsigned long env_num(const char *name, unsigned long def)
{
    const char *v = getenv(name);
    return v && *v ? strtoul(v, NULL, 10) : def;
}

int main(void)
{
    /* No /dev/console in the initramfs (building it needs no mknod): mount devtmpfs. */
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    int fd = open("/dev/console", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
    }

    unsigned long ws = env_num("lmas_ws", 256), rate = env_num("lmas_rate", 32);
    npages = (uint64_t)ws * 1024 * 1024 / PAGE;
    mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    gen = mmap(NULL, npages * sizeof *gen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || gen == MAP_FAILED) {
        say("lmas-dirty: cannot map %llu MiB\n", ws, 0, 0, 0, 0);
        for (;;)
            pause();
    }
    double t0 = now();
    for (uint64_t i = 0; i < npages; i++)
        fill_page(i);
    say("lmas-dirty: ready ws_mib=%llu rate_mib_s=%llu pages=%llu fill_ms=%llu\n", ws, rate,
        npages, (unsigned long long)((now() - t0) * 1000), 0);

    const double pages_per_sec = (double)rate * 1024 * 1024 / PAGE;
    uint64_t dirtied = 0, pass = 0, ok = 0, bad = 0, cursor = 0, rng = 0x1234567;
    double start = now();
    for (;;) {
        /* Catch up with the dirtying rate. */
        uint64_t due = (uint64_t)((now() - start) * pages_per_sec);
        while (dirtied < due) {
            rng = mix(rng);
            uint64_t i = rng % npages;
            gen[i]++;
            fill_page(i);
            dirtied++;
        }
        /* Check the next few pages. */
        for (int k = 0; k < 64; k++) {
            uint64_t got, want;
            int w = check_page(cursor, &got, &want);
            if (w < 0) {
                ok++;
            } else {
                bad++;
                say("lmas-dirty: BAD page %llu gen %llu word %llu: got %llx want %llx\n", cursor,
                    gen[cursor], (unsigned long long)w, got, want);
                fill_page(cursor); /* report each corruption once */
            }
            if (++cursor == npages) {
                cursor = 0;
                pass++;
                say("lmas-dirty: pass %llu ok=%llu bad=%llu dirtied=%llu\n", pass, ok, bad,
                    dirtied, 0);
                ok = bad = 0;
            }
        }
    }
}
