/*
 * host_noise.c - how steady is this machine? Copies 256 MiB with memcpy
 * every 150 ms for S seconds (default 30) and prints the spread of the
 * rates. Nothing else should run meanwhile: what varies is the host under
 * this VM (other tenants, frequency), which no prediction made from
 * earlier measurements can see. Read benchmark spreads against it.
 *
 * Usage: host_noise [seconds]
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SIZE ((size_t)256 << 20)
#define MAXN 4096

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 30;
    unsigned char *a = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    unsigned char *b = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (a == MAP_FAILED || b == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(a, 1, SIZE);
    static double rate[MAXN];
    int n = 0;
    for (double t0 = now_s(); now_s() - t0 < secs && n < MAXN;) {
        double t = now_s();
        memcpy(b, a, SIZE);
        rate[n++] = (double)SIZE / (now_s() - t) / 1e9;
        usleep(150000);
    }
    qsort(rate, (size_t)n, sizeof rate[0], cmp);
    printf("memcpy of 256 MiB, %d samples over %.0f s: min %.2f, p10 %.2f, median %.2f, p90 %.2f, max %.2f GB/s\n", n,
           secs, rate[0], rate[n / 10], rate[n / 2], rate[n * 9 / 10], rate[n - 1]);
    printf("p10..p90 is %.0f %% .. %+.0f %% of the median\n", 100 * (rate[n / 10] / rate[n / 2] - 1),
           100 * (rate[n * 9 / 10] / rate[n / 2] - 1));
    return 0;
}
