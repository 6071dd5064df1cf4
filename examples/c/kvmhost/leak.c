/*
 * leak.c - what the process holds (descriptors, threads), so a test can tell
 * whether a migration that ended, however it ended, left something behind.
 */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvmhost.h"

static int count_entries(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

void proc_sample(struct proc_sample *p)
{
    p->fds = count_entries("/proc/self/fd");
    if (p->fds > 0)
        p->fds--;   /* opendir's own descriptor */
    p->threads = count_entries("/proc/self/task");
}

/* A thread the library ends asynchronously may still be on its way out:
 * give it up to 500 ms. A real leak stays, so it still shows. */
void proc_sample_settled(struct proc_sample *p, const struct proc_sample *before)
{
    for (int i = 0; i < 50; i++) {
        proc_sample(p);
        if (p->fds <= before->fds && p->threads <= before->threads)
            return;
        sleep_ns(10 * 1000000ull);
    }
}

static void *leaked_thread(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

/* Testing aid (KVMHOST_LEAK=fd|thread): leak one on purpose, to prove the
 * fault tests' leak check catches it. */
void leak_on_purpose(int fd)
{
    const char *what = getenv("KVMHOST_LEAK");
    if (!what)
        return;
    if (!strcmp(what, "fd") && dup(fd) >= 0)
        logmsg("KVMHOST_LEAK=fd: leaked a descriptor on purpose");
    pthread_t t;
    if (!strcmp(what, "thread") && pthread_create(&t, NULL, leaked_thread, NULL) == 0)
        logmsg("KVMHOST_LEAK=thread: leaked a thread on purpose");
}
