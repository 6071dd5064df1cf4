/*
 * timeline.c - --timeline FILE.svg: one migration as a chart, drawn from
 * the library's progress callbacks (no plotting library): remaining bytes,
 * transfer and dirty rate, expected downtime against the limit, and the
 * auto-converge throttle over time, with the switchover and the measured
 * downtime marked.
 *
 * The SVG is plain and machine-checkable (tests/integration/check_timeline.py):
 * every quantity is one <polyline class="series" data-quantity="..."> in its
 * panel, axes have <text class="axis-label">, the switchover is
 * <line id="switchover"> and the measured downtime <rect id="downtime">.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include "kvmhost.h"
#include "migrationkit.h"

struct tl_sample {
    uint64_t t_ns;
    double remaining_mib, rate_mbs, dirty_mbs, expected_ms, limit_ms, throttle;
    int status;
};

struct timeline {
    pthread_mutex_t lock;
    struct tl_sample *s;
    size_t n, cap;
};

struct timeline *timeline_new(void)
{
    struct timeline *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    pthread_mutex_init(&t->lock, NULL);
    return t;
}

void timeline_free(struct timeline *t)
{
    if (!t)
        return;
    free(t->s);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* From the progress callback (the migration thread) or the final stats. */
void timeline_record(struct timeline *t, uint64_t now, const mk_stats *s)
{
    if (!t || s->status == MK_STATUS_NONE)
        return;
    struct tl_sample x;
    x.t_ns = now;
    x.remaining_mib = (double)s->ram_remaining / 1048576.0;
    x.rate_mbs = s->ram_mbps / 8.0; /* Mbit/s -> MB/s */
    x.dirty_mbs = (double)s->ram_dirty_pages_rate * (double)(s->ram_page_size ? s->ram_page_size : 4096) / 1e6;
    x.expected_ms = (double)expected_downtime_us(s) / 1e3;
    x.limit_ms = (double)s->downtime_limit_ms;
    x.throttle = s->cpu_throttle_percentage;
    x.status = s->status;
    pthread_mutex_lock(&t->lock);
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        struct tl_sample *p = realloc(t->s, cap * sizeof(*p));
        if (!p) {
            pthread_mutex_unlock(&t->lock);
            return;
        }
        t->s = p;
        t->cap = cap;
    }
    t->s[t->n++] = x;
    pthread_mutex_unlock(&t->lock);
}

/* ---- drawing ---- */

#define W 960
#define LEFT 80
#define RIGHT 170
#define TOP 56
#define PANEL_H 130
#define GAP 34
#define PLOT_W (W - LEFT - RIGHT)

/* A "nice" axis maximum at or above v (1, 2, 2.5, 5 x 10^k). */
static double nice_max(double v)
{
    if (!(v > 0))
        return 1;
    double e = 1e-6; /* no libm: the power of ten at or below v */
    while (e * 10 <= v)
        e *= 10;
    const double steps[] = { 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10 };
    for (int i = 0; i < 11; i++)
        if (steps[i] * e >= v * 1.0000001)
            return steps[i] * e;
    return 10 * e;
}

static void fmt_num(char *buf, size_t cap, double v)
{
    double av = v < 0 ? -v : v;
    if (v == 0)
        snprintf(buf, cap, "0");
    else if (av >= 100 || v == (double)(long long)v)
        snprintf(buf, cap, "%.0f", v);
    else if (av >= 10)
        snprintf(buf, cap, "%.1f", v);
    else
        snprintf(buf, cap, "%.2g", v);
}

struct series {
    const char *quantity, *label, *color;
    int dashed;
    size_t off; /* offsetof the field in tl_sample */
};

struct panel {
    const char *id, *ylabel;
    double fixed_max; /* > 0: y axis 0..fixed_max */
    struct series ser[2];
    int nser;
};

static double field(const struct tl_sample *x, size_t off)
{
    return *(const double *)((const char *)x + off);
}

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else
            fputc(*s, f);
    }
}

int timeline_write_svg(struct timeline *t, const char *path, const struct timeline_marks *m, char *err, size_t errcap)
{
    pthread_mutex_lock(&t->lock);
    size_t n = t->n;
    struct tl_sample *s = malloc((n ? n : 1) * sizeof(*s));
    if (s && n)
        memcpy(s, t->s, n * sizeof(*s));
    pthread_mutex_unlock(&t->lock);
    if (!s) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        snprintf(err, errcap, "%s: cannot open for writing", path);
        free(s);
        return -1;
    }

    const struct panel panels[] = {
        { "remaining", "remaining (MiB)", 0,
          { { "remaining_bytes", "RAM remaining", "#1f77b4", 0, offsetof(struct tl_sample, remaining_mib) } }, 1 },
        { "rates", "rate (MB/s)", 0,
          { { "transfer_rate", "transfer rate", "#2ca02c", 0, offsetof(struct tl_sample, rate_mbs) },
            { "dirty_rate", "dirty rate", "#d62728", 0, offsetof(struct tl_sample, dirty_mbs) } }, 2 },
        { "downtime", "downtime (ms)", 0,
          { { "expected_downtime", "expected downtime", "#9467bd", 0, offsetof(struct tl_sample, expected_ms) },
            { "downtime_limit", "downtime limit", "#7f7f7f", 1, offsetof(struct tl_sample, limit_ms) } }, 2 },
        { "throttle", "throttle (%)", 100,
          { { "throttle", "CPU throttle", "#ff7f0e", 0, offsetof(struct tl_sample, throttle) } }, 1 },
    };
    const int np = (int)(sizeof(panels) / sizeof(panels[0]));
    const int height = TOP + np * PANEL_H + (np - 1) * GAP + 60;

    /* time axis: migration start .. end (or the last sample) */
    double tmax = (double)(m->end_ns > m->start_ns ? m->end_ns - m->start_ns : 0) / 1e9;
    for (size_t i = 0; i < n; i++) {
        double ti = (double)(s[i].t_ns > m->start_ns ? s[i].t_ns - m->start_ns : 0) / 1e9;
        if (ti > tmax)
            tmax = ti;
    }
    double xmax = nice_max(tmax > 0 ? tmax : 1);
#define XPOS(sec) (LEFT + (sec) / xmax * PLOT_W)

    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", W, height, W, height);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, height);
    fprintf(f, "<text id=\"title\" x=\"%d\" y=\"22\" font-size=\"15\" font-weight=\"bold\">", LEFT);
    xml_text(f, m->title);
    fprintf(f, "</text>\n<text id=\"summary\" x=\"%d\" y=\"40\" fill=\"#444\">", LEFT);
    xml_text(f, m->summary);
    fprintf(f, "</text>\n");

    char a[32], b[32];
    double sw = m->pause_ns > m->start_ns ? (double)(m->pause_ns - m->start_ns) / 1e9 : -1;
    for (int p = 0; p < np; p++) {
        const struct panel *pn = &panels[p];
        int y0 = TOP + p * (PANEL_H + GAP), y1 = y0 + PANEL_H;
        double ymax = pn->fixed_max;
        if (!(ymax > 0)) {
            double v = 0;
            for (size_t i = 0; i < n; i++)
                for (int k = 0; k < pn->nser; k++)
                    if (field(&s[i], pn->ser[k].off) > v)
                        v = field(&s[i], pn->ser[k].off);
            if (!strcmp(pn->id, "downtime") && m->downtime_ms > v)
                v = m->downtime_ms;
            ymax = nice_max(v);
        }
#define YPOS(v) (y1 - ((v) > ymax ? ymax : (v)) / ymax * PANEL_H)
        fprintf(f, "<g class=\"panel\" id=\"panel-%s\">\n", pn->id);
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#fafafa\" stroke=\"#999\"/>\n", LEFT, y0,
                PLOT_W, PANEL_H);
        /* y axis: 0, half, max */
        for (int k = 0; k <= 2; k++) {
            double v = ymax * k / 2;
            double y = YPOS(v);
            fmt_num(a, sizeof(a), v);
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", LEFT, y, LEFT + PLOT_W, y);
            fprintf(f, "<text class=\"tick\" x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", LEFT - 6, y + 4, a);
        }
        fprintf(f, "<text class=\"axis-label\" data-axis=\"y\" x=\"16\" y=\"%d\" text-anchor=\"middle\" "
                   "transform=\"rotate(-90 16 %d)\">%s</text>\n", (y0 + y1) / 2, (y0 + y1) / 2, pn->ylabel);
        /* x ticks on every panel, the label under the last one */
        for (int k = 0; k <= 5; k++) {
            double sec = xmax * k / 5;
            fmt_num(a, sizeof(a), sec);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#999\"/>\n", XPOS(sec), y1, XPOS(sec), y1 + 4);
            fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", XPOS(sec), y1 + 16, a);
        }
        /* the switchover and the measured downtime */
        if (sw >= 0) {
            double w = m->downtime_ms / 1e3 / xmax * PLOT_W;
            fprintf(f, "<rect %s class=\"downtime\" x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"#ffcccc\" "
                       "opacity=\"0.8\"/>\n", p == 0 ? "id=\"downtime\"" : "", XPOS(sw), y0, w < 2 ? 2 : w, PANEL_H);
            fprintf(f, "<line %s class=\"switchover\" x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#c00\" "
                       "stroke-dasharray=\"4 3\"/>\n", p == 0 ? "id=\"switchover\"" : "", XPOS(sw), y0, XPOS(sw), y1);
        }
        for (int k = 0; k < pn->nser; k++) {
            const struct series *se = &pn->ser[k];
            fprintf(f, "<polyline class=\"series\" id=\"series-%s\" data-quantity=\"%s\" fill=\"none\" stroke=\"%s\" "
                       "stroke-width=\"1.8\"%s points=\"", se->quantity, se->quantity, se->color,
                    se->dashed ? " stroke-dasharray=\"6 4\"" : "");
            for (size_t i = 0; i < n; i++) {
                double ti = (double)(s[i].t_ns > m->start_ns ? s[i].t_ns - m->start_ns : 0) / 1e9;
                fprintf(f, "%s%.1f,%.1f", i ? " " : "", XPOS(ti), YPOS(field(&s[i], se->off)));
            }
            fprintf(f, "\"/>\n");
            /* legend */
            int ly = y0 + 14 + k * 18;
            fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"%s/>\n",
                    LEFT + PLOT_W + 12, ly - 4, LEFT + PLOT_W + 34, ly - 4, se->color,
                    se->dashed ? " stroke-dasharray=\"6 4\"" : "");
            fprintf(f, "<text class=\"legend\" x=\"%d\" y=\"%d\">%s</text>\n", LEFT + PLOT_W + 40, ly, se->label);
        }
        if (!strcmp(pn->id, "downtime") && sw >= 0 && m->downtime_ms > 0) {
            double y = YPOS(m->downtime_ms);
            fmt_num(a, sizeof(a), m->downtime_ms);
            fmt_num(b, sizeof(b), m->expected_at_switchover_ms);
            fprintf(f, "<circle id=\"measured-downtime\" cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#c00\"/>\n", XPOS(sw), y);
            fprintf(f, "<text class=\"annotation\" x=\"%.1f\" y=\"%.1f\" fill=\"#c00\" text-anchor=\"end\">measured "
                       "downtime %s ms (expected %s ms)</text>\n", XPOS(sw) - 6, y < y0 + 14 ? y0 + 14 : y - 6, a, b);
            fprintf(f, "<text class=\"legend\" x=\"%d\" y=\"%d\" fill=\"#c00\">&#9679; measured</text>\n",
                    LEFT + PLOT_W + 12, y0 + 14 + 2 * 18);
        }
        if (p == 0 && sw >= 0)
            fprintf(f, "<text class=\"annotation\" x=\"%.1f\" y=\"%d\" fill=\"#c00\">switchover</text>\n", XPOS(sw) + 4,
                    y0 + 12);
        fprintf(f, "</g>\n");
#undef YPOS
    }
    int ylast = TOP + np * PANEL_H + (np - 1) * GAP;
    fprintf(f, "<text class=\"axis-label\" data-axis=\"x\" x=\"%d\" y=\"%d\" text-anchor=\"middle\">time since "
               "migration start (s)</text>\n", LEFT + PLOT_W / 2, ylast + 36);
    fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"#666\" font-size=\"10\">%zu progress reports; shaded: source vCPU pause -> "
               "destination ack</text>\n", LEFT, ylast + 52, n);
    fprintf(f, "</svg>\n");
#undef XPOS
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        snprintf(err, errcap, "%s: write failed", path);
        free(s);
        return -1;
    }
    free(s);
    return 0;
}
