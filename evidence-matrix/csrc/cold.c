/*
 * A C library function with a `.cold` part that blocks: gcc moves code
 * that runs only while an exception unwinds through the function (its
 * cleanups) to a part of its own, `run_holding.cold`, outside the
 * function's code and beginning inside its frame. Here the cleanup waits
 * for a held slot to be given back. None of the shared libraries of the
 * machines the matrix runs on has a `.cold` part that blocks on a path
 * Rust code can reach (glibc's are unwind cleanups that release locks, and
 * abort paths), so the matrix builds this one, as a C library is built
 * (-O2, -fexceptions, unwind tables, no frame pointer).
 */
#include <unistd.h>

struct slot {
    volatile int *held;
    unsigned int us;
};

/* Gives a held slot back, after waiting `us` for its holder. */
static void release(struct slot *s) {
    if (*s->held) {
        usleep(s->us);
        *s->held = 0;
    }
}

/* Runs `work` holding the slot; if `work` unwinds, the slot is released
 * by the cleanup on the way out. */
__attribute__((noinline)) int run_holding(volatile int *held, unsigned int us,
                                          void (*work)(void)) {
    struct slot s __attribute__((cleanup(release))) = {held, us};
    *held = 1;
    work();
    *held = 0;
    return 0;
}
