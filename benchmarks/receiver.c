/* The outbound benchmarks' webhook endpoints: a compiled HTTP/1.1 receiver.
 *
 * One epoll loop, no threads, so its CPU share is easy to report (it shows
 * the receiver has headroom: the relay, not the endpoint, is what is
 * measured). Compiled by benchmarks/run.py into a temporary directory
 * (gcc -O2); no binary is committed.
 *
 *   receiver --ports N [--blackhole I] [--status I=CODE] [--retry-after S] [--ids M] [--late-ms X]
 *
 * Listens on N ports of 127.0.0.1 (the OS picks them) and prints
 * {"ports":[...]} on stdout. Every port answers each POST with its status
 * (200 unless --status says otherwise), keep-alive unless the request asks
 * for "Connection: close". For each request it records the CLOCK_MONOTONIC
 * time its last byte was read and the body's "t" (the load client's
 * CLOCK_MONOTONIC send time), so latency = webhook sent -> endpoint read; and
 * the "webhook-id" (decimal), to count distinct deliveries and repeats.
 * Port I given to --blackhole accepts connections and never reads from them
 * (an endpoint that hangs). With --retry-after S, a 429 or 503 answer
 * carries "Retry-After: S".
 *
 * Commands on stdin, one a line:
 *   go                         reset the counters: the measured window starts
 *   status I CODE              port I answers CODE from now on
 *   stats LIST                 print the figures now (LIST: port indexes
 *                              "0,1,2" or "all": the ports the "agg" figures
 *                              and the wait condition cover)
 *   wait KIND TOTAL SECONDS LIST
 *                              print the figures once the LIST ports have
 *                              TOTAL of KIND ("ok": distinct ids answered
 *                              2xx; "posts": requests read), or SECONDS passed
 *
 * The figures: per port and over LIST, requests read, distinct 2xx ids,
 * repeats, latency quantiles and the count later than --late-ms (default
 * 10), the time of the last read; and the receiver's own CPU since "go".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "receiver: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* ---- latency histogram: 1 us buckets to 50 ms, then 100 us to 60 s ---- */

#define FINE 50000
#define COARSE 600000
typedef struct {
    uint64_t fine[FINE];
    uint64_t coarse[COARSE];
    uint64_t n, over, max_ns, late;
    double sum_ns;
} hist_t;

static uint64_t g_late_ns = 10000000ull;

static void hist_add(hist_t *h, int64_t ns) {
    if (ns < 0) ns = 0;
    uint64_t us = (uint64_t)ns / 1000;
    if (us < FINE) h->fine[us]++;
    else if (us / 100 < COARSE) h->coarse[us / 100]++;
    else h->over++;
    h->n++;
    h->sum_ns += (double)ns;
    if ((uint64_t)ns > h->max_ns) h->max_ns = ns;
    if ((uint64_t)ns > g_late_ns) h->late++;
}

static void hist_merge(hist_t *into, const hist_t *h) {
    if (!h->n) return;
    for (int i = 0; i < FINE; i++) into->fine[i] += h->fine[i];
    for (int i = 0; i < COARSE; i++) into->coarse[i] += h->coarse[i];
    into->n += h->n;
    into->over += h->over;
    into->late += h->late;
    into->sum_ns += h->sum_ns;
    if (h->max_ns > into->max_ns) into->max_ns = h->max_ns;
}

static double hist_q(const hist_t *h, double q) { /* ms */
    if (!h->n) return -1;
    uint64_t want = (uint64_t)(q * (double)h->n);
    if (want >= h->n) want = h->n - 1;
    uint64_t seen = 0;
    for (int i = 0; i < FINE; i++) {
        seen += h->fine[i];
        if (seen > want) return (i + 0.5) / 1000.0;
    }
    for (int i = 0; i < COARSE; i++) {
        seen += h->coarse[i];
        if (seen > want) return (i * 100 + 50) / 1000.0;
    }
    return h->max_ns / 1e6;
}

static void hist_json(const hist_t *h) {
    printf("\"n\":%llu,\"late\":%llu,\"mean_ms\":%.4f,\"p50_ms\":%.4f,\"p90_ms\":%.4f,\"p99_ms\":%.4f,"
           "\"p999_ms\":%.4f,\"max_ms\":%.4f",
           (unsigned long long)h->n, (unsigned long long)h->late, h->n ? h->sum_ns / h->n / 1e6 : -1.0,
           hist_q(h, 0.5), hist_q(h, 0.9), hist_q(h, 0.99), hist_q(h, 0.999), h->max_ns / 1e6);
}

/* ---- ports and connections ---- */

#define MAXPORTS 64
typedef struct {
    int lfd, port, status, blackhole;
    uint64_t posts, ok, distinct, repeats, conns, last_read_ns;
    uint8_t *seen; /* one bit per webhook-id below g_ids */
    hist_t *h;
} port_t;

typedef struct {
    int fd, port; /* port index */
    char *in;
    size_t len, cap;
    char *out;
    size_t out_len, out_off;
    int close_after;
} conn_t;

static port_t g_ports[MAXPORTS];
static int g_nports;
static uint64_t g_ids = 1u << 22;
static int g_retry_after = -1;
static conn_t **g_conns; /* by fd */
static int g_maxfd;
static int g_ep;

enum { K_LISTEN = 1, K_CONN = 2, K_STDIN = 3 };
static uint64_t tag(int kind, int idx) { return ((uint64_t)kind << 32) | (uint32_t)idx; }

static const char *reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 410: return "Gone";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
    }
}

static void conn_close(conn_t *c) {
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    g_conns[c->fd] = NULL;
    free(c->in);
    free(c->out);
    free(c);
}

static void port_reset(port_t *p) {
    p->posts = p->ok = p->distinct = p->repeats = p->conns = p->last_read_ns = 0;
    memset(p->seen, 0, g_ids / 8);
    memset(p->h, 0, sizeof(hist_t));
}

static int64_t find_int_after(const char *s, const char *end, const char *key) {
    size_t kl = strlen(key);
    const char *p = memmem(s, end - s, key, kl);
    if (!p) return -1;
    p += kl;
    while (p < end && (*p == ' ' || *p == '"')) p++;
    int64_t v = 0;
    int any = 0;
    while (p < end && *p >= '0' && *p <= '9') { v = v * 10 + (*p - '0'); p++; any = 1; }
    return any ? v : -1;
}

/* A header's value (case-insensitive name) in [head, he), or NULL. */
static const char *header(const char *head, const char *he, const char *name, size_t *vlen) {
    size_t nl = strlen(name);
    for (const char *p = head; p < he; p++) {
        if (*p != '\n' || p + 1 + nl + 1 > he) continue;
        if (strncasecmp(p + 1, name, nl) || p[1 + nl] != ':') continue;
        const char *v = p + 2 + nl;
        while (v < he && *v == ' ') v++;
        const char *e = memchr(v, '\r', he - v);
        if (!e) e = he;
        *vlen = e - v;
        return v;
    }
    return NULL;
}

/* Answer the complete requests in c->in; returns -1 if the connection closed. */
static int serve(conn_t *c, uint64_t t_read) {
    port_t *p = &g_ports[c->port];
    size_t off = 0;
    for (;;) {
        char *start = c->in + off;
        size_t avail = c->len - off;
        char *he = avail >= 4 ? memmem(start, avail, "\r\n\r\n", 4) : NULL;
        if (!he) break;
        size_t head_len = he + 4 - start, vlen = 0;
        const char *v = header(start, he, "content-length", &vlen);
        long clen = v ? atol(v) : 0;
        if (avail < head_len + (size_t)clen) break;
        char *body = start + head_len, *end = body + clen;
        int close_req = 0;
        if ((v = header(start, he, "connection", &vlen)) && vlen >= 5 && !strncasecmp(v, "close", 5)) close_req = 1;
        int64_t t = find_int_after(body, end, "\"t\":");
        int64_t id = -1;
        if ((v = header(start, he, "webhook-id", &vlen)) && vlen && v[0] >= '0' && v[0] <= '9') {
            id = 0;
            for (size_t i = 0; i < vlen && v[i] >= '0' && v[i] <= '9'; i++) id = id * 10 + (v[i] - '0');
        }
        p->posts++;
        p->last_read_ns = t_read;
        if (t > 0) hist_add(p->h, (int64_t)(t_read - (uint64_t)t));
        int status = p->status;
        if (status >= 200 && status < 300) {
            p->ok++;
            if (id >= 0 && (uint64_t)id < g_ids) {
                uint8_t bit = 1u << (id & 7);
                if (p->seen[id >> 3] & bit) p->repeats++;
                else { p->seen[id >> 3] |= bit; p->distinct++; }
            } else p->distinct++; /* not checkable: counted as distinct */
        }
        char resp[200], ra[48] = "";
        if (g_retry_after >= 0 && (status == 429 || status == 503))
            snprintf(ra, sizeof ra, "Retry-After: %d\r\n", g_retry_after);
        int n = snprintf(resp, sizeof resp, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\n%s%s\r\n", status,
                         reason(status), ra, close_req ? "Connection: close\r\n" : "");
        ssize_t w = write(c->fd, resp, n);
        if (w < n) {
            /* rare: keep the rest and finish on EPOLLOUT */
            if (w < 0) {
                if (errno != EAGAIN) { conn_close(c); return -1; }
                w = 0;
            }
            c->out = realloc(c->out, c->out_len - c->out_off + (n - w));
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
            memcpy(c->out + c->out_len, resp + w, n - w);
            c->out_len += n - w;
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = tag(K_CONN, c->fd)};
            epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
        off += head_len + clen;
        if (close_req) {
            c->close_after = 1;
            break;
        }
    }
    if (off) {
        memmove(c->in, c->in + off, c->len - off);
        c->len -= off;
    }
    if (c->close_after && c->out_off == c->out_len) { conn_close(c); return -1; }
    return 0;
}

static void on_conn(conn_t *c, uint32_t events) {
    if (events & EPOLLOUT && c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w > 0) c->out_off += w;
        if (c->out_off == c->out_len) {
            if (c->close_after) { conn_close(c); return; }
            struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag(K_CONN, c->fd)};
            epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    int got = 0;
    for (;;) {
        if (c->cap - c->len < 16384) {
            c->cap *= 2;
            c->in = realloc(c->in, c->cap);
            if (!c->in) die("realloc");
        }
        ssize_t r = read(c->fd, c->in + c->len, c->cap - c->len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) break;
        if (r <= 0) {
            if (got && serve(c, now_ns()) < 0) return; /* closed there */
            conn_close(c);
            return;
        }
        c->len += r;
        got = 1;
        if ((size_t)r < c->cap - c->len + r) break; /* short read: drained */
    }
    if (got) serve(c, now_ns());
}

static void on_accept(int pi) {
    port_t *p = &g_ports[pi];
    for (;;) {
        int fd = accept4(p->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            if (errno == EMFILE || errno == ENFILE) { fprintf(stderr, "receiver: out of files\n"); return; }
            die("accept");
        }
        p->conns++;
        if (p->blackhole) continue; /* kept open, never read, never answered */
        if (fd >= g_maxfd) {
            int n = g_maxfd;
            while (fd >= n) n *= 2;
            g_conns = realloc(g_conns, n * sizeof *g_conns);
            memset(g_conns + g_maxfd, 0, (n - g_maxfd) * sizeof *g_conns);
            g_maxfd = n;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        c->fd = fd;
        c->port = pi;
        c->cap = 65536;
        c->in = malloc(c->cap);
        g_conns[fd] = c;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag(K_CONN, fd)};
        epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev);
    }
}

/* ---- commands ---- */

static double g_cpu0;
static uint64_t g_go_ns;
static hist_t *g_agg;

static int parse_list(const char *s, int *mask) {
    memset(mask, 0, sizeof(int) * MAXPORTS);
    if (!s || !*s || !strncmp(s, "all", 3)) {
        for (int i = 0; i < g_nports; i++) mask[i] = 1;
        return 0;
    }
    while (*s) {
        int i = atoi(s);
        if (i >= 0 && i < g_nports) mask[i] = 1;
        const char *c = strchr(s, ',');
        if (!c) break;
        s = c + 1;
    }
    return 0;
}

static uint64_t total(const int *mask, int posts) {
    uint64_t n = 0;
    for (int i = 0; i < g_nports; i++)
        if (mask[i]) n += posts ? g_ports[i].posts : g_ports[i].distinct;
    return n;
}

static void print_stats(const int *mask, int timed_out) {
    memset(g_agg, 0, sizeof(hist_t));
    uint64_t posts = 0, ok = 0, distinct = 0, repeats = 0, last = 0;
    printf("{\"timed_out\":%d,\"cpu_s\":%.4f,\"wall_s\":%.4f,\"ports\":[", timed_out, cpu_s() - g_cpu0,
           (now_ns() - g_go_ns) / 1e9);
    for (int i = 0; i < g_nports; i++) {
        port_t *p = &g_ports[i];
        printf("%s{\"port\":%d,\"status\":%d,\"blackhole\":%d,\"posts\":%llu,\"ok\":%llu,\"distinct\":%llu,"
               "\"repeats\":%llu,\"conns\":%llu,",
               i ? "," : "", p->port, p->status, p->blackhole, (unsigned long long)p->posts,
               (unsigned long long)p->ok, (unsigned long long)p->distinct, (unsigned long long)p->repeats,
               (unsigned long long)p->conns);
        hist_json(p->h);
        printf("}");
        if (!mask[i]) continue;
        hist_merge(g_agg, p->h);
        posts += p->posts;
        ok += p->ok;
        distinct += p->distinct;
        repeats += p->repeats;
        if (p->last_read_ns > last) last = p->last_read_ns;
    }
    printf("],\"agg\":{\"posts\":%llu,\"ok\":%llu,\"distinct\":%llu,\"repeats\":%llu,\"last_read_ns\":%llu,",
           (unsigned long long)posts, (unsigned long long)ok, (unsigned long long)distinct,
           (unsigned long long)repeats, (unsigned long long)last);
    hist_json(g_agg);
    printf("}}\n");
    fflush(stdout);
}

typedef struct {
    int active, posts;
    uint64_t want, deadline;
    int mask[MAXPORTS];
} wait_t;

static wait_t g_wait;

static void command(char *line) {
    char a[32] = "", b[64] = "", c[64] = "", d[512] = "";
    int n = sscanf(line, "%31s %63s %63s %511s", a, b, c, d);
    if (n < 1) return;
    if (!strcmp(a, "go")) {
        for (int i = 0; i < g_nports; i++) port_reset(&g_ports[i]);
        g_cpu0 = cpu_s();
        g_go_ns = now_ns();
    } else if (!strcmp(a, "status") && n >= 3) {
        int i = atoi(b);
        if (i >= 0 && i < g_nports) g_ports[i].status = atoi(c);
    } else if (!strcmp(a, "stats")) {
        int mask[MAXPORTS];
        parse_list(n >= 2 ? b : NULL, mask);
        print_stats(mask, 0);
    } else if (!strcmp(a, "wait") && n >= 4) {
        g_wait.active = 1;
        g_wait.posts = !strcmp(b, "posts");
        g_wait.want = strtoull(c, NULL, 10);
        g_wait.deadline = now_ns() + (uint64_t)(atof(d) * 1e9);
        char list[512] = "";
        sscanf(line, "%*s %*s %*s %*s %511s", list);
        parse_list(list, g_wait.mask);
    }
}

int main(int argc, char **argv) {
    int nports = 1;
    int blackhole = -1;
    int status[MAXPORTS];
    for (int i = 0; i < MAXPORTS; i++) status[i] = 200;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ports")) nports = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--blackhole")) blackhole = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--retry-after")) g_retry_after = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ids")) g_ids = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--late-ms")) g_late_ns = (uint64_t)(atof(argv[i + 1]) * 1e6);
        else if (!strcmp(argv[i], "--status")) {
            int p = atoi(argv[i + 1]);
            const char *eq = strchr(argv[i + 1], '=');
            if (eq && p >= 0 && p < MAXPORTS) status[p] = atoi(eq + 1);
        } else {
            fprintf(stderr, "usage: receiver --ports N [--blackhole I] [--status I=CODE] [--retry-after S] [--ids M] "
                            "[--late-ms X]\n");
            return 2;
        }
    }
    if (nports < 1 || nports > MAXPORTS) {
        fprintf(stderr, "receiver: 1 to %d ports\n", MAXPORTS);
        return 2;
    }
    g_ids = (g_ids + 7) & ~7ull;
    g_nports = nports;
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    g_maxfd = 1024;
    g_conns = calloc(g_maxfd, sizeof *g_conns);
    g_agg = malloc(sizeof(hist_t));
    printf("{\"ports\":[");
    for (int i = 0; i < nports; i++) {
        port_t *p = &g_ports[i];
        p->status = status[i];
        p->blackhole = i == blackhole;
        p->seen = calloc(g_ids / 8, 1);
        p->h = calloc(1, sizeof(hist_t));
        p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (p->lfd < 0) die("socket");
        int one = 1;
        setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
        if (bind(p->lfd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
        if (listen(p->lfd, 4096) < 0) die("listen");
        socklen_t sl = sizeof sa;
        getsockname(p->lfd, (struct sockaddr *)&sa, &sl);
        p->port = ntohs(sa.sin_port);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag(K_LISTEN, i)};
        epoll_ctl(g_ep, EPOLL_CTL_ADD, p->lfd, &ev);
        printf("%s%d", i ? "," : "", p->port);
    }
    printf("]}\n");
    fflush(stdout);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.u64 = tag(K_STDIN, 0)};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, 0, &sev);
    g_cpu0 = cpu_s();
    g_go_ns = now_ns();
    char cmd[4096];
    size_t cmd_len = 0;
    struct epoll_event evs[256];
    for (;;) {
        int k = epoll_wait(g_ep, evs, 256, 50);
        if (k < 0 && errno != EINTR) die("epoll_wait");
        for (int e = 0; e < k; e++) {
            int kind = (int)(evs[e].data.u64 >> 32), idx = (int)(uint32_t)evs[e].data.u64;
            if (kind == K_LISTEN) on_accept(idx);
            else if (kind == K_CONN) {
                if (idx < g_maxfd && g_conns[idx]) on_conn(g_conns[idx], evs[e].events);
            } else if (kind == K_STDIN) {
                ssize_t r = read(0, cmd + cmd_len, sizeof cmd - 1 - cmd_len);
                if (r == 0) return 0; /* the driver went away */
                if (r < 0) continue;
                cmd_len += r;
                char *nl;
                while ((nl = memchr(cmd, '\n', cmd_len))) {
                    *nl = 0;
                    command(cmd);
                    size_t used = nl + 1 - cmd;
                    memmove(cmd, nl + 1, cmd_len - used);
                    cmd_len -= used;
                }
                if (cmd_len == sizeof cmd - 1) cmd_len = 0;
            }
        }
        if (g_wait.active) {
            uint64_t have = total(g_wait.mask, g_wait.posts);
            int late = now_ns() > g_wait.deadline;
            if (have >= g_wait.want || late) {
                g_wait.active = 0;
                print_stats(g_wait.mask, have < g_wait.want);
            }
        }
    }
}
