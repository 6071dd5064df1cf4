/*
 * progress.c - the live one-line progress display (rewritten in place on a
 * terminal, plain periodic lines otherwise) and the final `info migrate`-style
 * report.
 */
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "kvmhost.h"
#include "migrationkit.h"

const char *bw_source_name(int s)
{
    switch (s) {
    case MK_BW_LINK: return "link";
    case MK_BW_THROUGHPUT: return "throughput";
    case MK_BW_OVERRIDE: return "override";
    case MK_BW_PIPELINE: return "pipeline";
    default: return "none";
    }
}

const char *switchover_reason_name(int r)
{
    switch (r) {
    case MK_SWITCHOVER_NONE: return "none";
    case MK_SWITCHOVER_TARGET: return "target";
    case MK_SWITCHOVER_NO_GAIN: return "no-gain";
    case MK_SWITCHOVER_TIMEOUT: return "timeout";
    default: return "unknown";
    }
}

uint64_t expected_downtime_us(const mk_stats *s)
{
    uint64_t parts = 0;
    if (MK_HAS(s, expected_margin_us))
        parts = s->expected_ram_us + s->expected_backlog_us + s->expected_device_us + s->expected_dest_us +
                s->expected_fixed_us;
    /* no parts (a 0.1 library, or one that does not fill them yet): the ms figure */
    return parts ? parts : s->expected_downtime_ms * 1000;
}

void json_expected(FILE *f, const mk_stats *s)
{
    if (!MK_HAS(s, pipeline_bandwidth)) {
        fprintf(f, "null");
        return;
    }
    fprintf(f, "{\"downtime_us\": %llu, \"ram_us\": %llu, \"backlog_us\": %llu, \"device_us\": %llu, "
               "\"dest_us\": %llu, \"fixed_us\": %llu, \"margin_us\": %llu, \"downtime_target_ms\": %llu, "
               "\"switchover_reason\": \"%s\", \"backlog_bytes\": %llu, \"rtt_us\": %llu, \"dest_resume_us\": %llu, "
               "\"pipeline_bandwidth\": %llu}",
            (unsigned long long)expected_downtime_us(s), (unsigned long long)s->expected_ram_us,
            (unsigned long long)s->expected_backlog_us, (unsigned long long)s->expected_device_us,
            (unsigned long long)s->expected_dest_us, (unsigned long long)s->expected_fixed_us,
            (unsigned long long)s->expected_margin_us, (unsigned long long)s->downtime_target_ms,
            switchover_reason_name(s->switchover_reason), (unsigned long long)s->backlog_bytes,
            (unsigned long long)s->rtt_us, (unsigned long long)s->dest_resume_us,
            (unsigned long long)s->pipeline_bandwidth);
}

/* The 0.2 part of `info migrate`: what expected downtime is made of, and why
 * the source switched over. */
static void print_expected_parts(FILE *f, const mk_stats *s)
{
    if (!MK_HAS(s, pipeline_bandwidth)) {
        fprintf(f, "expected downtime parts: not reported (library struct_size %u)\n", s->struct_size);
        return;
    }
    fprintf(f, "downtime target: %llu ms\n", (unsigned long long)s->downtime_target_ms);
    fprintf(f, "expected downtime: %.3f ms = RAM %.3f + backlog %.3f + device %.3f + destination %.3f + fixed %.3f "
               "(+ margin %.3f for the decision)\n",
            expected_downtime_us(s) / 1e3, s->expected_ram_us / 1e3, s->expected_backlog_us / 1e3,
            s->expected_device_us / 1e3, s->expected_dest_us / 1e3, s->expected_fixed_us / 1e3,
            s->expected_margin_us / 1e3);
    if (s->status == MK_STATUS_COMPLETED)
        fprintf(f, "downtime: actual %.3f ms vs expected %.3f ms (%+.3f ms)\n", s->downtime_us / 1e3,
                expected_downtime_us(s) / 1e3, ((double)s->downtime_us - (double)expected_downtime_us(s)) / 1e3);
    fprintf(f, "switchover reason: %s\n", switchover_reason_name(s->switchover_reason));
    fprintf(f, "backlog: %llu bytes; return-channel rtt: %llu us; destination END -> ack: %llu us\n",
            (unsigned long long)s->backlog_bytes, (unsigned long long)s->rtt_us,
            (unsigned long long)s->dest_resume_us);
    fprintf(f, "pipeline bandwidth: %.1f MB/s\n", (double)s->pipeline_bandwidth / 1e6);
}

void progress_line(int mode, double t, const mk_stats *s, const char *guest, const char *why)
{
    if (mode == PROGRESS_NONE)
        return;
    char rem[32], sent[32], tot[32];
    fmt_bytes(rem, sizeof(rem), s->ram_remaining);
    fmt_bytes(sent, sizeof(sent), s->ram_transferred);
    fmt_bytes(tot, sizeof(tot), s->ram_total);
    char line[512];
    int n = snprintf(line, sizeof(line),
                     "[%6.1fs] %-9s pass %llu  remaining %s  sent %s of %s  %.0f Mbit/s  expected downtime %llu ms (limit %llu)  throttle %u%%",
                     t, mk_status_name(s->status), (unsigned long long)s->passes, rem, sent, tot, s->ram_mbps,
                     (unsigned long long)s->expected_downtime_ms, (unsigned long long)s->downtime_limit_ms,
                     s->cpu_throttle_percentage);
    if (guest && *guest && n < (int)sizeof(line))
        n += snprintf(line + n, sizeof(line) - (size_t)n, "  | guest %s", guest);
    if (why && *why && n < (int)sizeof(line))
        snprintf(line + n, sizeof(line) - (size_t)n, "  | %s", why);
    if (mode == PROGRESS_TTY) {
        /* one line, rewritten in place: never wider than the terminal */
        struct winsize ws;
        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20 && strlen(line) >= ws.ws_col)
            line[ws.ws_col - 1] = 0;
        fprintf(stdout, "\r\033[K%s", line);
        fflush(stdout);
    } else {
        fprintf(stdout, "%s\n", line);
        fflush(stdout);
    }
}

void progress_done(int mode)
{
    if (mode == PROGRESS_TTY) {
        fprintf(stdout, "\n");
        fflush(stdout);
    }
}

void print_info_migrate(FILE *f, const mk_stats *s)
{
    fprintf(f, "Migration status: %s", mk_status_name(s->status));
    if (s->error)
        fprintf(f, " (error: %s)", mk_strerror(s->error));
    fprintf(f, "\n");
    fprintf(f, "total time: %llu ms\n", (unsigned long long)s->total_time_ms);
    if (s->status == MK_STATUS_COMPLETED)
        fprintf(f, "downtime: %llu ms\n", (unsigned long long)s->downtime_ms);
    else
        fprintf(f, "expected downtime: %llu ms\n", (unsigned long long)s->expected_downtime_ms);
    fprintf(f, "setup: %llu ms\n", (unsigned long long)s->setup_time_ms);
    fprintf(f, "transferred ram: %llu kbytes\n", (unsigned long long)(s->ram_transferred >> 10));
    fprintf(f, "throughput: %.2f mbps\n", s->ram_mbps);
    fprintf(f, "remaining ram: %llu kbytes\n", (unsigned long long)(s->ram_remaining >> 10));
    fprintf(f, "total ram: %llu kbytes\n", (unsigned long long)(s->ram_total >> 10));
    fprintf(f, "duplicate: %llu pages\n", (unsigned long long)s->ram_duplicate);
    fprintf(f, "normal: %llu pages\n", (unsigned long long)s->ram_normal);
    fprintf(f, "normal bytes: %llu kbytes\n", (unsigned long long)(s->ram_normal_bytes >> 10));
    fprintf(f, "dirty sync count: %llu\n", (unsigned long long)s->ram_dirty_sync_count);
    fprintf(f, "page size: %llu kbytes\n", (unsigned long long)(s->ram_page_size >> 10));
    fprintf(f, "dirty pages rate: %llu pages\n", (unsigned long long)s->ram_dirty_pages_rate);
    fprintf(f, "cpu throttle percentage: %u\n", s->cpu_throttle_percentage);
    if (MK_HAS(s, nr_vcpus))
        fprintf(f, "throttle mode: %s; guest time taken by throttling: %.1f vCPU-ms\n",
                s->throttle_mode == MK_THROTTLE_STEP ? "step" : "closed-loop", s->throttle_sleep_us / 1e3);
    fprintf(f, "passes: %llu\n", (unsigned long long)s->passes);
    fprintf(f, "downtime limit: %llu ms\n", (unsigned long long)s->downtime_limit_ms);
    fprintf(f, "expected downtime at switchover: %llu ms\n", (unsigned long long)s->expected_downtime_ms);
    fprintf(f, "bandwidth estimate: %.1f MB/s (%s); switchover bandwidth %.1f MB/s\n",
            (double)s->bandwidth_estimate / 1e6, bw_source_name(s->bandwidth_source),
            (double)s->switchover_bandwidth / 1e6);
    fprintf(f, "device state: %llu bytes (estimate %llu)\n", (unsigned long long)s->device_state_bytes,
            (unsigned long long)s->pending_device_bytes);
    print_expected_parts(f, s);
    if (s->stop_pause_us || s->downtime_us)
        fprintf(f,
                "stop-and-copy: pause %.3f ms, dirty sync %.3f ms, RAM %.3f ms (%llu KiB), device %.3f ms, "
                "flush+ack %.3f ms = %.3f ms\n",
                s->stop_pause_us / 1e3, s->stop_sync_us / 1e3, s->stop_ram_us / 1e3,
                (unsigned long long)(s->stop_ram_bytes >> 10), s->stop_device_us / 1e3, s->stop_flush_us / 1e3,
                s->downtime_us / 1e3);
    /* Time the migration thread could not get a CPU: a busy host, not the link. */
    if (s->downtime_us && MK_HAS(s, stop_cpu_wait_us) && s->stop_cpu_wait_us != UINT64_MAX)
        fprintf(f, "stop-and-copy: the migration thread waited %.3f ms for a CPU\n", s->stop_cpu_wait_us / 1e3);
}
