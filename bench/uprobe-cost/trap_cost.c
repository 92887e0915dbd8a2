/* What one uprobe hit costs, by the kind of instruction it is placed on (see run.sh).
 *
 * sub_rsp: begins with `sub $0x18,%rsp`, as OpenSSL 3's SSL_read/SSL_write wrappers do: the
 *          kernel cannot emulate it, so each hit also executes it out of line under a
 *          single-step trap.
 * push:    begins with `push %r13`, as ssl_read_internal/ssl_write_internal do: emulated inside
 *          the breakpoint trap.
 * nop5:    begins with a 5-byte nop (emulated).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

__attribute__((noinline, naked)) int sub_rsp(void) {
    __asm__ volatile("sub $0x18,%rsp\n\tadd $0x18,%rsp\n\tmov $1,%eax\n\tret");
}
__attribute__((noinline, naked)) int push(void) {
    __asm__ volatile("push %r13\n\tpop %r13\n\tmov $1,%eax\n\tret");
}
__attribute__((noinline, naked)) int nop5(void) {
    __asm__ volatile(".byte 0x0f,0x1f,0x44,0x00,0x00\n\tmov $1,%eax\n\tret");
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s sub_rsp|push|nop5 CALLS\n", argv[0]);
        return 2;
    }
    int (*f)(void) = !strcmp(argv[1], "sub_rsp") ? sub_rsp : !strcmp(argv[1], "push") ? push : nop5;
    long n = atol(argv[2]), sum = 0;
    double t0 = now();
    for (long i = 0; i < n; i++)
        sum += f();
    double wall = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
    /* Wall time per call, and the CPU time the guest kernel charged to this process: on a VM
     * the difference is time the vCPU spent elsewhere (the hypervisor handling an exit, or other
     * work while this one waited). */
    printf("%s: %.2f us per call, of which %.2f us charged as CPU time (%ld calls)\n", argv[1],
           wall / n * 1e6, cpu / n * 1e6, sum);
    return 0;
}
