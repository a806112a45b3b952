/* The benchmark's load: websocket subscribers and a webhook publisher.
 *
 * One epoll loop per process, no threads, so a single core carries a lot of
 * load and its CPU time is easy to report. Compiled by benchmarks/run.py
 * into a temporary directory (gcc -O2); no binary is committed.
 *
 *   load sub HOST PORT CHANNEL N [--stall K] [--inflight M] [--rcvbuf B]
 *       Opens N websocket subscribers (at most M handshakes in flight: the
 *       connect storm), prints {"ready":...} once every welcome arrived, then
 *       reads events. Commands on stdin, one per line:
 *         go                       reset counters; the measured window starts
 *         wait FIRST LAST SECONDS  every reading subscriber must get ids
 *                                  FIRST..LAST; print the result and exit
 *       The last K subscribers stall: they take their welcome and never read
 *       again (small receive buffer), like a consumer that hangs.
 *
 *   load pub HOST PORT ROUTE --count C --seconds S [--rate R] [--conns K]
 *            [--size B] [--newconn]
 *       POSTs C webhooks (or for S seconds, whichever ends first) with a JSON
 *       body {"t":<CLOCK_MONOTONIC ns at send>,"pad":"..."} of B bytes.
 *       --rate 0 saturates: K keep-alive connections, one request in flight
 *       each. --rate R sends on a fixed schedule over up to K connections.
 *       --newconn opens a connection per webhook (Connection: close).
 *       Prints one JSON line: acknowledged count, first and last id, rate,
 *       ack latency, CPU.
 *
 * Latency is receipt time minus the body's "t", both CLOCK_MONOTONIC on one
 * machine; a frame's receipt time is the time its read() returned.
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
#include <sys/timerfd.h>
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
    fprintf(stderr, "load: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* ---- latency histogram: 1 us buckets to 100 ms, then 100 us to 100 s ---- */

#define FINE 100000
#define COARSE 1000000
typedef struct {
    uint64_t fine[FINE];
    uint64_t coarse[COARSE];
    uint64_t n, over, max_ns;
    double sum_ns;
} hist_t;

static void hist_add(hist_t *h, int64_t ns) {
    if (ns < 0) ns = 0;
    uint64_t us = (uint64_t)ns / 1000;
    if (us < FINE) h->fine[us]++;
    else if (us / 100 < COARSE) h->coarse[us / 100]++;
    else h->over++;
    h->n++;
    h->sum_ns += (double)ns;
    if ((uint64_t)ns > h->max_ns) h->max_ns = ns;
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

static void hist_json(const char *name, const hist_t *h) {
    printf("\"%s\":{\"n\":%llu,\"mean_ms\":%.4f,\"p50_ms\":%.4f,\"p90_ms\":%.4f,\"p99_ms\":%.4f,"
           "\"p999_ms\":%.4f,\"max_ms\":%.4f}",
           name, (unsigned long long)h->n, h->n ? h->sum_ns / h->n / 1e6 : -1.0, hist_q(h, 0.5), hist_q(h, 0.9),
           hist_q(h, 0.99), hist_q(h, 0.999), h->max_ns / 1e6);
}

static int tcp_socket(int rcvbuf) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    return fd;
}

static struct sockaddr_in server_addr(const char *host, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "load: bad host %s\n", host);
        exit(2);
    }
    return a;
}

static int64_t parse_id_after(const char *p, const char *end, const char *key) {
    /* The decimal id in `key"NNN"` (key like "\"id\":"), or -1. */
    size_t klen = strlen(key);
    const char *k = memmem(p, end - p, key, klen);
    if (!k && key[klen - 1] == ':') { /* tolerate "id": "1" */
        char spaced[32];
        snprintf(spaced, sizeof spaced, "%.*s ", (int)(klen - 1), key);
        k = memmem(p, end - p, spaced, klen);
        if (k) klen++;
    }
    if (!k) return -1;
    k += klen;
    while (k < end && *k == ' ') k++;
    if (k < end && *k == '"') k++;
    if (k < end && *k == '"') return 0; /* "" : empty store */
    int64_t v = 0;
    int any = 0;
    while (k < end && *k >= '0' && *k <= '9') v = v * 10 + (*k++ - '0'), any = 1;
    return any ? v : -1;
}

/* ================================ subscribers ================================ */

enum { S_CONNECTING, S_HANDSHAKE, S_OPEN, S_STALLED, S_CLOSED };

typedef struct {
    int fd, state, stalled;
    char *carry; /* bytes of an incomplete frame (or of the 101 head) */
    size_t carry_len, carry_cap;
    int64_t head;      /* id in the welcome */
    int64_t last;      /* last event id received */
    int64_t first;     /* first event id received in the window */
    uint64_t frames;   /* event frames in the window */
    uint64_t disorder; /* an id not exactly last+1 */
    int close_code;
    uint64_t t_start, t_welcome;
} sub_t;

static sub_t *subs;
static int nsubs, nstall;
static hist_t *lat;
static uint64_t total_frames, total_bytes, other_frames, t_last_frame;
static int64_t want_last = -1;
static uint64_t send_pong_count;
static char handshake[1024];
static int handshake_len;

static void carry_append(sub_t *s, const char *p, size_t n) {
    if (s->carry_len + n > s->carry_cap) {
        size_t cap = s->carry_cap ? s->carry_cap : 4096;
        while (cap < s->carry_len + n) cap *= 2;
        s->carry = realloc(s->carry, cap);
        if (!s->carry) die("realloc");
        s->carry_cap = cap;
    }
    memcpy(s->carry + s->carry_len, p, n);
    s->carry_len += n;
}

static void on_text(sub_t *s, const char *p, size_t n, uint64_t t_recv) {
    const char *end = p + n;
    size_t lead = n < 24 ? n : 24;
    if (memmem(p, lead, "\"event\"", 7)) {
        int64_t id = parse_id_after(p, end, "\"id\":");
        if (s->frames == 0) s->first = id;
        else if (id != s->last + 1) s->disorder++;
        s->last = id;
        s->frames++;
        total_frames++;
        total_bytes += n;
        t_last_frame = t_recv;
        const char *t = memmem(p, n, "{\"t\":", 5);
        if (t) {
            t += 5;
            uint64_t v = 0;
            while (t < end && *t >= '0' && *t <= '9') v = v * 10 + (*t++ - '0');
            hist_add(lat, (int64_t)(t_recv - v));
        }
    } else if (memmem(p, lead, "\"welcome\"", 9)) {
        s->head = parse_id_after(p, end, "\"id\":");
        s->last = s->head;
        s->t_welcome = t_recv;
    } else {
        other_frames++;
    }
}

static void send_pong(sub_t *s, const char *payload, size_t n) {
    char buf[6 + 125];
    if (n > 125) n = 125;
    buf[0] = (char)0x8A;
    buf[1] = (char)(0x80 | n);
    memset(buf + 2, 0, 4); /* a zero mask key leaves the payload as is */
    memcpy(buf + 6, payload, n);
    if (write(s->fd, buf, 6 + n) < 0) { /* best effort */
    }
    send_pong_count++;
}

/* Parse every complete frame in p[0..n); returns bytes consumed. */
static size_t parse_frames(sub_t *s, const char *p, size_t n, uint64_t t_recv) {
    size_t off = 0;
    while (n - off >= 2) {
        const unsigned char *h = (const unsigned char *)p + off;
        int op = h[0] & 0x0f;
        uint64_t len = h[1] & 0x7f;
        size_t hl = 2;
        if (len == 126) {
            if (n - off < 4) break;
            len = ((uint64_t)h[2] << 8) | h[3];
            hl = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | h[2 + i];
            hl = 10;
        }
        if (h[1] & 0x80) hl += 4; /* servers must not mask; tolerate it */
        if (n - off < hl + len) break;
        const char *pl = p + off + hl;
        if (op == 1 || op == 2 || op == 0) on_text(s, pl, len, t_recv);
        else if (op == 9) send_pong(s, pl, len);
        else if (op == 8) {
            s->close_code = len >= 2 ? ((unsigned char)pl[0] << 8 | (unsigned char)pl[1]) : 1005;
            s->state = S_CLOSED;
        }
        off += hl + len;
    }
    return off;
}

static char rbuf[1 << 20];

static void sub_feed(sub_t *s, const char *data, size_t n, uint64_t t_recv) {
    if (s->state == S_HANDSHAKE) {
        carry_append(s, data, n);
        char *e = memmem(s->carry, s->carry_len, "\r\n\r\n", 4);
        if (!e) return;
        if (s->carry_len < 12 || memcmp(s->carry + 9, "101", 3) != 0) {
            fprintf(stderr, "load: handshake refused: %.60s\n", s->carry);
            s->state = S_CLOSED;
            return;
        }
        size_t head = e + 4 - s->carry;
        memmove(s->carry, s->carry + head, s->carry_len - head);
        s->carry_len -= head;
        s->state = S_OPEN;
        data = NULL;
        n = 0;
    }
    if (s->carry_len) {
        if (n) carry_append(s, data, n);
        size_t used = parse_frames(s, s->carry, s->carry_len, t_recv);
        memmove(s->carry, s->carry + used, s->carry_len - used);
        s->carry_len -= used;
    } else if (n) {
        size_t used = parse_frames(s, data, n, t_recv);
        if (used < n) carry_append(s, data + used, n - used);
    }
}

static int sub_main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: load sub HOST PORT CHANNEL N [--stall K] [--inflight M] [--rcvbuf B]\n");
        return 2;
    }
    const char *host = argv[2];
    int port = atoi(argv[3]);
    const char *channel = argv[4];
    nsubs = atoi(argv[5]);
    int inflight = 500, stall_rcvbuf = 4096;
    double connect_timeout = 60;
    for (int i = 6; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--stall")) nstall = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--inflight")) inflight = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rcvbuf")) stall_rcvbuf = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--connect-timeout")) connect_timeout = atof(argv[i + 1]);
    }
    struct sockaddr_in addr = server_addr(host, port);
    handshake_len = snprintf(handshake, sizeof handshake,
                             "GET /ws?channel=%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n",
                             channel, host, port);
    subs = calloc(nsubs, sizeof(sub_t));
    lat = calloc(1, sizeof(hist_t));
    hist_t *hs = calloc(1, sizeof(hist_t)); /* handshake times */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev, evs[512];
    ev.events = EPOLLIN;
    ev.data.u32 = 0xffffffffu; /* stdin */
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);

    uint64_t t0 = now_ns();
    int next = 0, pending = 0, ready = 0, failed = 0;
    uint64_t t_ready = 0;
    int announced = 0, going = 0, waiting = 0;
    uint64_t deadline = 0, t_go = 0;
    int64_t want_first = 0;
    double cpu_go = 0;
    char line[256];
    size_t line_len = 0;

    for (;;) {
        while (next < nsubs && pending < inflight) {
            sub_t *s = &subs[next];
            s->stalled = next >= nsubs - nstall;
            s->fd = tcp_socket(s->stalled ? stall_rcvbuf : 0);
            s->t_start = now_ns();
            s->last = -1;
            if (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) die("connect");
            s->state = S_CONNECTING;
            ev.events = EPOLLOUT;
            ev.data.u32 = next;
            epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
            next++;
            pending++;
        }
        if (!announced && ready + failed == nsubs) {
            t_ready = now_ns();
            printf("{\"ready\":%d,\"failed\":%d,\"connect_s\":%.4f,", ready, failed, (t_ready - t0) / 1e9);
            hist_json("handshake", hs);
            printf(",\"cpu_s\":%.4f}\n", cpu_s());
            fflush(stdout);
            announced = 1;
        }
        if (!announced && (now_ns() - t0) / 1e9 > connect_timeout) {
            printf("{\"ready\":%d,\"failed\":%d,\"error\":\"connect timeout\"}\n", ready, nsubs - ready);
            fflush(stdout);
            return 1;
        }
        int timeout = 100;
        int k = epoll_wait(ep, evs, 512, timeout);
        if (k < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < k; i++) {
            uint32_t idx = evs[i].data.u32;
            if (idx == 0xffffffffu) {
                ssize_t r = read(0, line + line_len, sizeof line - 1 - line_len);
                if (r <= 0) return 0; /* the orchestrator is gone */
                line_len += r;
                char *nl;
                while ((nl = memchr(line, '\n', line_len))) {
                    *nl = 0;
                    if (!strncmp(line, "go", 2)) {
                        for (int j = 0; j < nsubs; j++) subs[j].frames = 0, subs[j].disorder = 0;
                        memset(lat, 0, sizeof *lat);
                        total_frames = total_bytes = other_frames = 0;
                        t_go = now_ns();
                        cpu_go = cpu_s();
                        going = 1;
                    } else if (!strncmp(line, "wait ", 5)) {
                        double secs;
                        long long a, b;
                        if (sscanf(line + 5, "%lld %lld %lf", &a, &b, &secs) == 3) {
                            want_first = a, want_last = b;
                            deadline = now_ns() + (uint64_t)(secs * 1e9);
                            waiting = 1;
                        }
                    }
                    size_t used = nl + 1 - line;
                    memmove(line, nl + 1, line_len - used);
                    line_len -= used;
                }
                continue;
            }
            sub_t *s = &subs[idx];
            if (s->state == S_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    fprintf(stderr, "load: connect: %s\n", strerror(err));
                    s->state = S_CLOSED;
                    failed++, pending--;
                    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                    close(s->fd);
                    continue;
                }
                if (write(s->fd, handshake, handshake_len) != handshake_len) die("handshake write");
                s->state = S_HANDSHAKE;
                ev.events = EPOLLIN;
                ev.data.u32 = idx;
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                continue;
            }
            ssize_t r = read(s->fd, rbuf, sizeof rbuf);
            uint64_t t = now_ns();
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (!s->t_welcome) failed++, pending--;
                s->state = S_CLOSED;
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                continue;
            }
            int had_welcome = s->t_welcome != 0;
            sub_feed(s, rbuf, r, t);
            if (!had_welcome && s->t_welcome) {
                ready++, pending--;
                hist_add(hs, (int64_t)(s->t_welcome - s->t_start));
                if (s->stalled) {
                    s->state = S_STALLED;
                    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                }
            } else if (s->state == S_CLOSED && !had_welcome) {
                failed++, pending--;
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
            }
        }
        if (waiting) {
            int done = 1;
            for (int j = 0; j < nsubs && done; j++)
                if (subs[j].state == S_OPEN && subs[j].last < want_last) done = 0;
            if (done || now_ns() > deadline) break;
        }
    }
    /* What reached the stalled subscribers: read what the kernel holds. */
    uint64_t keep_frames = total_frames, keep_bytes = total_bytes, keep_last = t_last_frame;
    hist_t *keep_lat = lat;
    lat = calloc(1, sizeof(hist_t));
    uint64_t stalled_frames = 0;
    int stalled_1013 = 0, stalled_eof = 0;
    for (int j = 0; j < nsubs; j++) {
        sub_t *s = &subs[j];
        if (!s->stalled || s->state != S_STALLED) continue;
        s->state = S_OPEN;
        for (int tries = 0; tries < 100000; tries++) {
            ssize_t r = read(s->fd, rbuf, sizeof rbuf);
            if (r == 0) { stalled_eof++; break; }
            if (r < 0) break;
            sub_feed(s, rbuf, r, now_ns());
        }
        stalled_frames += s->frames;
        if (s->close_code == 1013) stalled_1013++;
    }
    free(lat);
    lat = keep_lat, total_frames = keep_frames, total_bytes = keep_bytes, t_last_frame = keep_last;
    /* Completeness over the subscribers that read (stalled ones excluded). */
    uint64_t expect = want_last >= want_first ? (uint64_t)(want_last - want_first + 1) : 0;
    int complete = 0, closed = 0, short_ = 0, disordered = 0, stalled_closed = 0;
    uint64_t min_frames = UINT64_MAX, max_frames = 0;
    for (int j = 0; j < nsubs; j++) {
        sub_t *s = &subs[j];
        if (s->stalled) continue;
        if (s->frames < min_frames) min_frames = s->frames;
        if (s->frames > max_frames) max_frames = s->frames;
        if (s->state == S_CLOSED) closed++;
        if (s->disorder) disordered++;
        if (s->frames == expect && s->disorder == 0 && (expect == 0 || (s->first == want_first && s->last == want_last)))
            complete++;
        else
            short_++;
    }
    (void)stalled_closed;
    double window = going && t_last_frame > t_go ? (t_last_frame - t_go) / 1e9 : 0;
    printf("{\"subscribers\":%d,\"reading\":%d,\"complete\":%d,\"incomplete\":%d,\"disordered\":%d,\"closed\":%d,"
           "\"expect_per_sub\":%llu,\"min_frames\":%llu,\"max_frames\":%llu,\"frames\":%llu,\"bytes\":%llu,"
           "\"other_frames\":%llu,\"t_go_ns\":%llu,\"t_last_frame_ns\":%llu,\"window_s\":%.4f,\"cpu_s\":%.4f,"
           "\"timed_out\":%s,\"stalled_frames\":%llu,\"stalled_1013\":%d,\"stalled_eof\":%d,",
           nsubs, nsubs - nstall, complete, short_, disordered, closed, (unsigned long long)expect,
           (unsigned long long)(min_frames == UINT64_MAX ? 0 : min_frames), (unsigned long long)max_frames,
           (unsigned long long)total_frames, (unsigned long long)total_bytes, (unsigned long long)other_frames,
           (unsigned long long)t_go, (unsigned long long)t_last_frame, window, cpu_s() - cpu_go,
           now_ns() > deadline ? "true" : "false", (unsigned long long)stalled_frames, stalled_1013, stalled_eof);
    hist_json("latency", lat);
    printf("}\n");
    fflush(stdout);
    return 0;
}

/* ================================= publisher ================================= */

typedef struct {
    int fd, busy;
    uint64_t t_sent;
    char *in;
    size_t in_len, in_cap;
    size_t out_off, out_len;
    char *out;
} conn_t;

static const char *g_host, *g_route;
static int g_port, g_size, g_newconn;
static struct sockaddr_in g_addr;

static size_t build_request(char *buf, size_t cap, uint64_t t) {
    char body_head[64];
    int bh = snprintf(body_head, sizeof body_head, "{\"t\":%llu,\"pad\":\"", (unsigned long long)t);
    int pad = g_size - bh - 2;
    if (pad < 0) pad = 0;
    int body_len = bh + pad + 2;
    int n = snprintf(buf, cap,
                     "POST /hooks/%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n%s\r\n",
                     g_route, g_host, g_port, body_len, g_newconn ? "Connection: close\r\n" : "");
    memcpy(buf + n, body_head, bh);
    memset(buf + n + bh, 'x', pad);
    memcpy(buf + n + bh + pad, "\"}", 2);
    return n + body_len;
}

static int pub_main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: load pub HOST PORT ROUTE --count C --seconds S [--rate R] [--conns K] [--size B] [--newconn 1]\n");
        return 2;
    }
    g_host = argv[2];
    g_port = atoi(argv[3]);
    g_route = argv[4];
    long long count = 1000;
    double seconds = 5, rate = 0;
    int nconns = 4;
    g_size = 1024;
    for (int i = 5; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--count")) count = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--conns")) nconns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size")) g_size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--newconn")) g_newconn = atoi(argv[i + 1]);
    }
    g_addr = server_addr(g_host, g_port);
    conn_t *cs = calloc(nconns, sizeof(conn_t));
    size_t out_cap = g_size + 512;
    for (int i = 0; i < nconns; i++) {
        cs[i].fd = -1;
        cs[i].out = malloc(out_cap);
        cs[i].in_cap = 65536;
        cs[i].in = malloc(cs[i].in_cap);
    }
    hist_t *ack = calloc(1, sizeof(hist_t));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int tfd = -1;
    struct epoll_event ev, evs[256];
    if (rate > 0) {
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        ev.events = EPOLLIN;
        ev.data.u32 = 0xffffffffu;
        epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    }
    long long sent = 0, acked = 0, bad = 0, errors = 0, dup = 0, behind = 0;
    int64_t first_id = -1, last_id = -1, min_id = INT64_MAX, max_id = -1;
    uint64_t t0 = now_ns(), end_at = t0 + (uint64_t)(seconds * 1e9);
    double cpu0 = cpu_s();
    int inflight = 0;
    int stop = 0;

    /* open (or reopen) connection i and send one request */
    #define SEND(i) do { \
        conn_t *c = &cs[i]; \
        if (c->fd < 0) { \
            c->fd = tcp_socket(0); \
            if (connect(c->fd, (struct sockaddr *)&g_addr, sizeof g_addr) < 0 && errno != EINPROGRESS) die("connect"); \
            ev.events = EPOLLIN | EPOLLOUT; ev.data.u32 = i; \
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev); \
        } \
        c->t_sent = now_ns(); \
        c->out_len = build_request(c->out, out_cap, c->t_sent); \
        c->out_off = 0; c->in_len = 0; c->busy = 1; \
        ssize_t w = write(c->fd, c->out, c->out_len); \
        if (w > 0) c->out_off = w; \
        if (c->out_off < c->out_len) { ev.events = EPOLLIN | EPOLLOUT; ev.data.u32 = i; epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev); } \
        else { ev.events = EPOLLIN; ev.data.u32 = i; epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev); } \
        sent++; inflight++; \
    } while (0)

    uint64_t period = rate > 0 ? (uint64_t)(1e9 / rate) : 0;
    uint64_t next_due = t0;
    if (rate > 0) {
        struct itimerspec its = {{0, 0}, {0, 1}};
        timerfd_settime(tfd, 0, &its, NULL); /* fire at once */
    } else {
        for (int i = 0; i < nconns && sent < count; i++) SEND(i);
    }
    while (!stop) {
        int k = epoll_wait(ep, evs, 256, 200);
        if (k < 0 && errno != EINTR) die("epoll_wait");
        uint64_t now = now_ns();
        if (now > end_at || sent >= count) {
            if (inflight == 0) break;
            if (now > end_at + 5000000000ull) break; /* responses that never come */
        }
        for (int e = 0; e < k; e++) {
            uint32_t i = evs[e].data.u32;
            if (i == 0xffffffffu) {
                uint64_t x;
                if (read(tfd, &x, sizeof x) < 0) { /* spurious */
                }
                now = now_ns();
                while (next_due <= now && sent < count && now < end_at) {
                    int idle = -1;
                    for (int j = 0; j < nconns; j++)
                        if (!cs[j].busy) { idle = j; break; }
                    if (idle < 0) { behind++; break; }
                    SEND(idle);
                    next_due += period;
                }
                /* Every connection busy: keep the schedule, look again soon. */
                uint64_t fire = next_due > now ? next_due : now + 50000;
                struct itimerspec its = {{0, 0}, {(time_t)(fire / 1000000000ull), (long)(fire % 1000000000ull)}};
                timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
                continue;
            }
            conn_t *c = &cs[i];
            if (c->fd < 0) continue;
            if ((evs[e].events & EPOLLOUT) && c->out_off < c->out_len) {
                ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
                if (w > 0) c->out_off += w;
                if (c->out_off == c->out_len) {
                    ev.events = EPOLLIN; ev.data.u32 = i;
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (!(evs[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            if (c->in_len == c->in_cap) { c->in_cap *= 2; c->in = realloc(c->in, c->in_cap); }
            ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            int closed = r <= 0;
            if (r > 0) c->in_len += r;
            /* A whole response: head, then Content-Length bytes of body. */
            char *he = c->in_len ? memmem(c->in, c->in_len, "\r\n\r\n", 4) : NULL;
            int complete = 0;
            if (he) {
                size_t head_len = he + 4 - c->in;
                long clen = 0;
                for (char *p = c->in; p < he; p++)
                    if ((*p == '\n') && !strncasecmp(p + 1, "content-length:", 15)) { clen = atol(p + 16); break; }
                if (c->in_len >= head_len + (size_t)clen) {
                    complete = 1;
                    int status = atoi(c->in + 9);
                    if (status == 202 || status == 200) {
                        int64_t id = parse_id_after(c->in + head_len, c->in + head_len + clen, "\"id\":");
                        if (status == 200) dup++;
                        acked++;
                        if (first_id < 0) first_id = id;
                        last_id = id;
                        if (id < min_id) min_id = id;
                        if (id > max_id) max_id = id;
                        hist_add(ack, (int64_t)(now_ns() - c->t_sent));
                    } else {
                        if (bad < 3) fprintf(stderr, "load: status %d: %.200s\n", status, c->in + head_len);
                        bad++;
                    }
                }
            }
            if (!complete && !closed) continue;
            if (!complete) errors++;
            c->busy = 0;
            inflight--;
            if (g_newconn || closed || !complete) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
            }
            now = now_ns();
            if (rate == 0 && sent < count && now < end_at) SEND(i);
        }
    }
    double elapsed = (now_ns() - t0) / 1e9;
    printf("{\"sent\":%lld,\"acked\":%lld,\"duplicates\":%lld,\"bad_status\":%lld,\"errors\":%lld,\"behind\":%lld,"
           "\"first_id\":%lld,\"last_id\":%lld,\"min_id\":%lld,\"max_id\":%lld,\"t0_ns\":%llu,\"elapsed_s\":%.4f,"
           "\"rate\":%.1f,\"cpu_s\":%.4f,",
           sent, acked, dup, bad, errors, behind, (long long)first_id, (long long)last_id,
           (long long)(min_id == INT64_MAX ? -1 : min_id), (long long)max_id, (unsigned long long)t0, elapsed,
           acked / elapsed, cpu_s() - cpu0);
    hist_json("ack", ack);
    printf("}\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "sub")) return sub_main(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "pub")) return pub_main(argc, argv);
    fprintf(stderr, "usage: load sub|pub ...\n");
    return 2;
}
