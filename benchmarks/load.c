/* The benchmark's load: websocket and SSE subscribers and a webhook publisher, plain or TLS.
 *
 * One epoll loop per process, no threads, so a single core carries a lot of
 * load and its CPU time is easy to report. Compiled by benchmarks/run.py
 * into a temporary directory (gcc -O2); no binary is committed.
 *
 *   load sub HOST PORT CHANNEL N [--stall K] [--inflight M] [--rcvbuf B]
 *            [--record 1] [--tls 1 [--cafile CA.pem]]
 *       Opens N websocket subscribers (at most M handshakes in flight: the
 *       connect storm), prints {"ready":...} once every welcome arrived, then
 *       reads events. Commands on stdin, one per line:
 *         go                       reset counters; the measured window starts
 *         wait FIRST LAST SECONDS  every reading subscriber must get ids
 *                                  FIRST..LAST; print the result and exit
 *         waitlist FILE SECONDS    (with --record 1) every reading subscriber
 *                                  must get exactly the ids FILE lists (one
 *                                  key a line, ascending), in that order:
 *                                  for stores whose ids are not consecutive
 *       The last K subscribers stall: they take their welcome and never read
 *       again (small receive buffer), like a consumer that hangs.
 *
 *   load sse HOST PORT CHANNEL N [same options]
 *       The same over Server-Sent Events: GET /sse?channel=CHANNEL, a chunked
 *       (or close-delimited) text/event-stream. An event is the block of
 *       lines up to a blank line; its `id:` line names it (and must agree
 *       with the envelope's "id" in the `data:` line), the latency comes from
 *       the "t" in `data:` as for websockets. The subscriber counts as ready
 *       at the `: welcome HEAD` comment both servers send once the
 *       subscription is live (the relay's sse.py; the baseline copies it).
 *       `: ping` comments, `retry:` and events of another `event:` type
 *       (the relay's `gap`) are not counted as events.
 *
 *   load pub HOST PORT ROUTE --count C --seconds S [--rate R] [--conns K]
 *            [--size B] [--newconn]
 *       POSTs C webhooks (or for S seconds, whichever ends first) with a JSON
 *       body {"t":<CLOCK_MONOTONIC ns at send>,"pad":"..."} of B bytes.
 *       --rate 0 saturates: K keep-alive connections, one request in flight
 *       each. --rate R sends on a fixed schedule over up to K connections.
 *       --newconn opens a connection per webhook (Connection: close).
 *       --ids FILE writes every acknowledged id (as a key, see below) there.
 *       --routes N spreads the webhooks over N routes, ROUTE0..ROUTE(N-1),
 *       in turn (webhook k to ROUTE(k % N)).
 *       Prints one JSON line: acknowledged count, first and last id, rate,
 *       ack latency, CPU.
 *
 * --tls 1 speaks TLS (OpenSSL, non-blocking, a full handshake per
 * connection, no session resumption); --cafile verifies the server's
 * certificate against that CA and its IP address. The publisher completes
 * its keep-alive connections' handshakes before its clock starts (with
 * --newconn each webhook's handshake is part of its ack time).
 *
 * Ids: a decimal id ("17") is its own key; a Redis stream id "MS-SEQ" is
 * MS * 2^20 + SEQ, which keeps the store's order.
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
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

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

static int64_t parse_id_text(const char *k, const char *end) {
    /* The id at k (after spaces and an opening quote): 0 for an empty one
     * (an empty store), -1 for none. "MS-SEQ" -> MS * 2^20 + SEQ. */
    while (k < end && *k == ' ') k++;
    if (k < end && *k == '"') k++;
    if (k >= end || *k == '"' || *k == '\r' || *k == '\n') return 0;
    int64_t v = 0;
    int any = 0;
    while (k < end && *k >= '0' && *k <= '9') v = v * 10 + (*k++ - '0'), any = 1;
    if (any && k + 1 < end && *k == '-' && k[1] >= '0' && k[1] <= '9') {
        int64_t seq = 0;
        k++;
        while (k < end && *k >= '0' && *k <= '9') seq = seq * 10 + (*k++ - '0');
        v = (v << 20) + seq;
    }
    return any ? v : -1;
}

static int64_t parse_id_after(const char *p, const char *end, const char *key) {
    /* The id in `key"NNN"` (key like "\"id\":"), or -1. */
    size_t klen = strlen(key);
    const char *k = memmem(p, end - p, key, klen);
    if (!k && key[klen - 1] == ':') { /* tolerate "id": "1" */
        char spaced[32];
        snprintf(spaced, sizeof spaced, "%.*s ", (int)(klen - 1), key);
        k = memmem(p, end - p, spaced, klen);
        if (k) klen++;
    }
    if (!k) return -1;
    return parse_id_text(k + klen, end);
}

/* ==================================== TLS ==================================== */

static SSL_CTX *g_tls; /* NULL: plain TCP */
static const char *g_tls_host;
static char g_tls_info[128];

static void tls_setup(const char *host, const char *cafile) {
    g_tls = SSL_CTX_new(TLS_client_method());
    if (!g_tls) { ERR_print_errors_fp(stderr); exit(2); }
    SSL_CTX_set_min_proto_version(g_tls, TLS1_2_VERSION);
    SSL_CTX_set_mode(g_tls, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(g_tls, SSL_SESS_CACHE_OFF);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    SSL_CTX_set_options(g_tls, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    if (cafile && *cafile) {
        if (SSL_CTX_load_verify_locations(g_tls, cafile, NULL) != 1) {
            fprintf(stderr, "load: cannot load CA %s\n", cafile);
            ERR_print_errors_fp(stderr);
            exit(2);
        }
        SSL_CTX_set_verify(g_tls, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(g_tls, SSL_VERIFY_NONE, NULL);
    }
    g_tls_host = host;
}

static SSL *tls_new(int fd) {
    SSL *ssl = SSL_new(g_tls);
    if (!ssl) { ERR_print_errors_fp(stderr); exit(1); }
    SSL_set_fd(ssl, fd);
    SSL_set_connect_state(ssl);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), g_tls_host);
    return ssl;
}

/* 1 done, 0 in progress (*want: the epoll event to wait for), -1 failed. */
static int tls_handshake(SSL *ssl, uint32_t *want) {
    ERR_clear_error();
    int r = SSL_do_handshake(ssl);
    if (r == 1) {
        if (!g_tls_info[0])
            snprintf(g_tls_info, sizeof g_tls_info, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
        return 1;
    }
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ) { *want = EPOLLIN; return 0; }
    if (e == SSL_ERROR_WANT_WRITE) { *want = EPOLLOUT; return 0; }
    char buf[256];
    ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
    static int reported;
    if (reported++ < 3)
        fprintf(stderr, "load: TLS handshake failed: %s (error %d, errno %s, verify: %s)\n", buf, e, strerror(errno),
                X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
    return -1;
}

/* >0 bytes, 0 end of stream, -1 with errno (EAGAIN: nothing now). Over TLS,
 * reads records until the socket has nothing more or buf is full. */
static ssize_t io_read(int fd, SSL *ssl, char *buf, size_t cap) {
    if (!ssl) return read(fd, buf, cap);
    size_t got = 0;
    while (got < cap) {
        ERR_clear_error();
        int r = SSL_read(ssl, buf + got, (int)(cap - got > INT_MAX ? INT_MAX : cap - got));
        if (r > 0) { got += r; continue; }
        if (got) return (ssize_t)got; /* the end or the error again on the next call */
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) { errno = EAGAIN; return -1; }
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) return 0;
        if (errno == 0 || errno == EAGAIN) errno = EIO;
        return -1;
    }
    return (ssize_t)got;
}

static ssize_t io_write(int fd, SSL *ssl, const char *buf, size_t n) {
    if (!ssl) return write(fd, buf, n);
    ERR_clear_error();
    int r = SSL_write(ssl, buf, (int)n);
    if (r > 0) return r;
    int e = SSL_get_error(ssl, r);
    errno = (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) ? EAGAIN : EIO;
    return -1;
}

static int io_pending(SSL *ssl) { return ssl ? SSL_pending(ssl) : 0; }

static void io_close(int fd, SSL **ssl) {
    if (*ssl) {
        SSL_free(*ssl);
        *ssl = NULL;
    }
    close(fd);
}

static int64_t *read_id_list(const char *path, size_t *n) {
    FILE *f = fopen(path, "r");
    if (!f) { *n = 0; return NULL; }
    size_t cap = 1024, k = 0;
    int64_t *v = malloc(cap * sizeof *v);
    long long x;
    while (fscanf(f, "%lld", &x) == 1) {
        if (k == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        v[k++] = x;
    }
    fclose(f);
    *n = k;
    return v;
}

/* ================================ subscribers ================================ */

enum { S_CONNECTING, S_TLS, S_HANDSHAKE, S_OPEN, S_STALLED, S_CLOSED };
enum { CH_SIZE, CH_DATA, CH_TAIL };

typedef struct {
    int fd, state, stalled;
    SSL *ssl;
    char *carry; /* bytes of an incomplete frame or SSE event (or of the response head) */
    size_t carry_len, carry_cap;
    int64_t head;      /* id in the welcome */
    int64_t last;      /* last event id received */
    int64_t first;     /* first event id received in the window */
    uint64_t frames;   /* event frames in the window */
    uint64_t disorder; /* an id not exactly last+1 (ids not greater than the last, with --record) */
    int close_code;
    uint64_t t_start, t_welcome;
    /* SSE over a chunked response */
    int chunked, ch_state, ch_ext, ch_tail;
    uint64_t ch_left;
    /* --record: every id received in the window */
    int64_t *got;
    size_t got_n, got_cap;
} sub_t;

static sub_t *subs;
static int nsubs, nstall, g_sse, g_record;
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

/* One event: its id, its envelope (the latency comes from the body's "t"). */
static void on_event(sub_t *s, int64_t id, const char *p, size_t n, uint64_t t_recv) {
    const char *end = p + n;
    if (s->frames == 0) s->first = id;
    else if (g_record ? id <= s->last : id != s->last + 1) s->disorder++;
    s->last = id;
    s->frames++;
    if (g_record) {
        if (s->got_n == s->got_cap) {
            s->got_cap = s->got_cap ? s->got_cap * 2 : 256;
            s->got = realloc(s->got, s->got_cap * sizeof *s->got);
            if (!s->got) die("realloc");
        }
        s->got[s->got_n++] = id;
    }
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
}

static void on_welcome(sub_t *s, int64_t head, uint64_t t_recv) {
    s->head = head;
    s->last = head;
    s->t_welcome = t_recv;
}

static void on_text(sub_t *s, const char *p, size_t n, uint64_t t_recv) {
    const char *end = p + n;
    size_t lead = n < 24 ? n : 24;
    if (memmem(p, lead, "\"event\"", 7)) {
        on_event(s, parse_id_after(p, end, "\"id\":"), p, n, t_recv);
    } else if (memmem(p, lead, "\"welcome\"", 9)) {
        on_welcome(s, parse_id_after(p, end, "\"id\":"), t_recv);
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
    if (io_write(s->fd, s->ssl, buf, 6 + n) < 0) { /* best effort */
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

/* ---- Server-Sent Events ---- */

/* One event block (its lines, without the blank line that ended it). */
static void sse_block(sub_t *s, const char *p, size_t n, uint64_t t_recv) {
    const char *end = p + n, *line = p;
    const char *data = NULL, *type = NULL;
    size_t data_len = 0, type_len = 0;
    int64_t id = -1;
    int has_id = 0;
    while (line < end) {
        const char *nl = memchr(line, '\n', end - line);
        const char *le = nl ? nl : end;
        size_t ll = le - line;
        if (ll && line[ll - 1] == '\r') ll--;
        if (ll >= 9 && !memcmp(line, ": welcome", 9)) {
            on_welcome(s, parse_id_text(line + 9, line + ll), t_recv);
        } else if (ll >= 5 && !memcmp(line, "data:", 5)) {
            if (data) { other_frames++; return; } /* a multi-line data field: not an envelope this bench sends */
            data = line + 5;
            if (data < line + ll && *data == ' ') data++;
            data_len = line + ll - data;
        } else if (ll >= 3 && !memcmp(line, "id:", 3)) {
            id = parse_id_text(line + 3, line + ll);
            has_id = 1;
        } else if (ll >= 6 && !memcmp(line, "event:", 6)) {
            type = line + 6;
            if (type < line + ll && *type == ' ') type++;
            type_len = line + ll - type;
        }
        line = nl ? nl + 1 : end;
    }
    if (!data) return; /* a comment (ping, welcome) or retry: */
    size_t lead = data_len < 24 ? data_len : 24;
    if ((type && !(type_len == 5 && !memcmp(type, "event", 5))) || !memmem(data, lead, "\"event\"", 7)) {
        other_frames++;
        return;
    }
    int64_t json_id = parse_id_after(data, data + data_len, "\"id\":");
    if (!has_id || json_id != id) s->disorder++; /* the id: line and the envelope disagree */
    on_event(s, json_id, data, data_len, t_recv);
}

/* Decoded body bytes: find whole events, each ended by a blank line (LF or
 * CRLF line ends), in one pass over what is new. */
static void sse_text(sub_t *s, uint64_t t_recv) {
    char *b = s->carry;
    size_t n = s->carry_len, off = 0, i = 0;
    for (;;) {
        char *nl = memchr(b + i, '\n', n - i);
        if (!nl) break;
        size_t j = nl - b + 1, next;
        if (j < n && b[j] == '\n') next = j + 1;
        else if (j + 1 < n && b[j] == '\r' && b[j + 1] == '\n') next = j + 2;
        else if (j >= n || (b[j] == '\r' && j + 1 >= n)) break; /* is a blank line next? wait for more */
        else { i = j; continue; }
        sse_block(s, b + off, nl - (b + off), t_recv);
        off = i = next;
    }
    if (off) {
        memmove(s->carry, s->carry + off, s->carry_len - off);
        s->carry_len -= off;
    }
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Response body bytes: de-chunk into carry, then parse events. */
static void sse_body(sub_t *s, const char *p, size_t n, uint64_t t_recv) {
    if (!s->chunked) {
        carry_append(s, p, n);
    } else {
        size_t i = 0;
        while (i < n && s->state != S_CLOSED) {
            if (s->ch_state == CH_SIZE) {
                char c = p[i++];
                if (c == '\n') {
                    if (s->ch_left == 0) { /* the last chunk: the server ended the stream */
                        s->state = S_CLOSED;
                        break;
                    }
                    s->ch_state = CH_DATA;
                    s->ch_ext = 0;
                } else if (!s->ch_ext && hexval(c) >= 0) {
                    s->ch_left = s->ch_left * 16 + hexval(c);
                } else {
                    s->ch_ext = 1; /* \r or a chunk extension */
                }
            } else if (s->ch_state == CH_DATA) {
                size_t take = n - i < s->ch_left ? n - i : s->ch_left;
                carry_append(s, p + i, take);
                i += take;
                s->ch_left -= take;
                if (!s->ch_left) s->ch_state = CH_TAIL, s->ch_tail = 2;
            } else { /* the \r\n after a chunk's data */
                i++;
                if (--s->ch_tail == 0) s->ch_state = CH_SIZE;
            }
        }
    }
    sse_text(s, t_recv);
}

static char rbuf[1 << 20];

static void sub_feed(sub_t *s, const char *data, size_t n, uint64_t t_recv) {
    if (s->state == S_HANDSHAKE) {
        carry_append(s, data, n);
        char *e = memmem(s->carry, s->carry_len, "\r\n\r\n", 4);
        if (!e) return;
        const char *want = g_sse ? "200" : "101";
        if (s->carry_len < 12 || memcmp(s->carry + 9, want, 3) != 0) {
            fprintf(stderr, "load: handshake refused: %.60s\n", s->carry);
            s->state = S_CLOSED;
            return;
        }
        size_t head = e + 4 - s->carry;
        s->state = S_OPEN;
        if (g_sse) {
            for (char *q = s->carry; q + 26 <= e; q++)
                if ((*q == 't' || *q == 'T') && !strncasecmp(q, "transfer-encoding: chunked", 26)) s->chunked = 1;
            size_t rest = s->carry_len - head;
            char *body = malloc(rest + 1);
            memcpy(body, s->carry + head, rest);
            s->carry_len = 0;
            sse_body(s, body, rest, t_recv);
            free(body);
            return;
        }
        memmove(s->carry, s->carry + head, s->carry_len - head);
        s->carry_len -= head;
        data = NULL;
        n = 0;
    }
    if (g_sse) {
        sse_body(s, data, n, t_recv);
        return;
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

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int sub_main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: load sub|sse HOST PORT CHANNEL N [--stall K] [--inflight M] [--rcvbuf B] [--record 1]"
                        " [--tls 1] [--cafile CA]\n");
        return 2;
    }
    g_sse = !strcmp(argv[1], "sse");
    const char *host = argv[2];
    int port = atoi(argv[3]);
    const char *channel = argv[4];
    nsubs = atoi(argv[5]);
    int inflight = 500, stall_rcvbuf = 4096, tls = 0;
    const char *cafile = NULL;
    double connect_timeout = 60;
    for (int i = 6; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--stall")) nstall = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--inflight")) inflight = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rcvbuf")) stall_rcvbuf = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--connect-timeout")) connect_timeout = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--record")) g_record = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--tls")) tls = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--cafile")) cafile = argv[i + 1];
    }
    struct sockaddr_in addr = server_addr(host, port);
    if (tls) tls_setup(host, cafile);
    if (g_sse)
        handshake_len = snprintf(handshake, sizeof handshake,
                                 "GET /sse?channel=%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                                 "Cache-Control: no-cache\r\n\r\n",
                                 channel, host, port);
    else
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
    int64_t *want_list = NULL;
    size_t want_n = 0;
    int list_mode = 0;
    double cpu_go = 0;
    char line[1024];
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
            printf("{\"ready\":%d,\"failed\":%d,\"connect_s\":%.4f,\"tls\":\"%s\",", ready, failed,
                   (t_ready - t0) / 1e9, g_tls_info);
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
                        for (int j = 0; j < nsubs; j++) subs[j].frames = 0, subs[j].disorder = 0, subs[j].got_n = 0;
                        memset(lat, 0, sizeof *lat);
                        total_frames = total_bytes = other_frames = 0;
                        t_go = now_ns();
                        cpu_go = cpu_s();
                        going = 1;
                    } else if (!strncmp(line, "waitlist ", 9)) {
                        char path[900];
                        double secs;
                        if (sscanf(line + 9, "%899s %lf", path, &secs) == 2) {
                            want_list = read_id_list(path, &want_n);
                            list_mode = 1;
                            if (want_n) {
                                qsort(want_list, want_n, sizeof *want_list, cmp_i64);
                                want_first = want_list[0], want_last = want_list[want_n - 1];
                            } else {
                                want_first = 0, want_last = -1;
                            }
                            deadline = now_ns() + (uint64_t)(secs * 1e9);
                            waiting = 1;
                        }
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
                if (g_tls) {
                    s->ssl = tls_new(s->fd);
                    s->state = S_TLS;
                } else {
                    if (write(s->fd, handshake, handshake_len) != handshake_len) die("handshake write");
                    s->state = S_HANDSHAKE;
                    ev.events = EPOLLIN;
                    ev.data.u32 = idx;
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                    continue;
                }
            }
            if (s->state == S_TLS) {
                uint32_t want = 0;
                int h = tls_handshake(s->ssl, &want);
                if (h < 0) {
                    s->state = S_CLOSED;
                    failed++, pending--;
                    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                    io_close(s->fd, &s->ssl);
                    continue;
                }
                ev.data.u32 = idx;
                if (h == 0) {
                    ev.events = want;
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                    continue;
                }
                if (io_write(s->fd, s->ssl, handshake, handshake_len) != handshake_len) die("handshake write (TLS)");
                s->state = S_HANDSHAKE;
                ev.events = EPOLLIN;
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                continue;
            }
            do {
                ssize_t r = io_read(s->fd, s->ssl, rbuf, sizeof rbuf);
                uint64_t t = now_ns();
                if (r <= 0) {
                    if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                    if (!s->t_welcome) failed++, pending--;
                    s->state = S_CLOSED;
                    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                    break;
                }
                int had_welcome = s->t_welcome != 0;
                sub_feed(s, rbuf, r, t);
                if (!had_welcome && s->t_welcome) {
                    ready++, pending--;
                    hist_add(hs, (int64_t)(s->t_welcome - s->t_start));
                    if (s->stalled) {
                        s->state = S_STALLED;
                        epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                        break;
                    }
                } else if (s->state == S_CLOSED && !had_welcome) {
                    failed++, pending--;
                    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                }
            } while (s->state != S_CLOSED && io_pending(s->ssl) > 0);
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
            ssize_t r = io_read(s->fd, s->ssl, rbuf, sizeof rbuf);
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
    uint64_t expect = list_mode ? want_n : want_last >= want_first ? (uint64_t)(want_last - want_first + 1) : 0;
    int complete = 0, closed = 0, short_ = 0, disordered = 0, stalled_closed = 0;
    uint64_t min_frames = UINT64_MAX, max_frames = 0;
    for (int j = 0; j < nsubs; j++) {
        sub_t *s = &subs[j];
        if (s->stalled) continue;
        if (s->frames < min_frames) min_frames = s->frames;
        if (s->frames > max_frames) max_frames = s->frames;
        if (s->state == S_CLOSED) closed++;
        if (s->disorder) disordered++;
        int ok;
        if (list_mode)
            ok = s->frames == expect && s->disorder == 0 && s->got_n == want_n &&
                 (want_n == 0 || !memcmp(s->got, want_list, want_n * sizeof *want_list));
        else
            ok = s->frames == expect && s->disorder == 0 &&
                 (expect == 0 || (s->first == want_first && s->last == want_last));
        if (ok) complete++;
        else short_++;
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
    int fd, busy, hs, registered; /* hs: the TLS handshake is not done yet; registered: with epoll */
    SSL *ssl;
    uint64_t t_sent;
    char *in;
    size_t in_len, in_cap;
    size_t out_off, out_len;
    char *out;
} conn_t;

static const char *g_host, *g_route;
static int g_port, g_size, g_newconn, g_routes;
static long long g_seq; /* webhooks built: with --routes N, webhook k goes to ROUTE(k % N) */
static struct sockaddr_in g_addr;

static size_t build_request(char *buf, size_t cap, uint64_t t) {
    char body_head[64];
    int bh = snprintf(body_head, sizeof body_head, "{\"t\":%llu,\"pad\":\"", (unsigned long long)t);
    int pad = g_size - bh - 2;
    if (pad < 0) pad = 0;
    int body_len = bh + pad + 2;
    char suffix[16] = "";
    if (g_routes > 0) snprintf(suffix, sizeof suffix, "%lld", g_seq % g_routes);
    g_seq++;
    int n = snprintf(buf, cap,
                     "POST /hooks/%s%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n%s\r\n",
                     g_route, suffix, g_host, g_port, body_len, g_newconn ? "Connection: close\r\n" : "");
    memcpy(buf + n, body_head, bh);
    memset(buf + n + bh, 'x', pad);
    memcpy(buf + n + bh + pad, "\"}", 2);
    return n + body_len;
}

/* Connect and finish the TLS handshake before the clock starts (bounded). */
static void tls_preconnect(conn_t *c) {
    c->fd = tcp_socket(0);
    if (connect(c->fd, (struct sockaddr *)&g_addr, sizeof g_addr) < 0 && errno != EINPROGRESS) die("connect");
    c->ssl = tls_new(c->fd);
    uint64_t deadline = now_ns() + 10000000000ull;
    uint32_t want = EPOLLOUT;
    for (;;) {
        int h = tls_handshake(c->ssl, &want);
        if (h == 1) return;
        if (h < 0 || now_ns() > deadline) {
            fprintf(stderr, "load: the publisher's TLS handshake did not complete\n");
            exit(1);
        }
        int ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = want}, out;
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        epoll_wait(ep, &out, 1, 100);
        close(ep);
    }
}

static int pub_main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: load pub HOST PORT ROUTE --count C --seconds S [--rate R] [--conns K] [--size B] [--newconn 1] [--routes N]"
                        " [--ids FILE] [--tls 1] [--cafile CA]\n");
        return 2;
    }
    g_host = argv[2];
    g_port = atoi(argv[3]);
    g_route = argv[4];
    long long count = 1000;
    double seconds = 5, rate = 0;
    int nconns = 4, tls = 0;
    const char *cafile = NULL, *ids_path = NULL;
    g_size = 1024;
    for (int i = 5; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--count")) count = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--conns")) nconns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size")) g_size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--newconn")) g_newconn = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--routes")) g_routes = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ids")) ids_path = argv[i + 1];
        else if (!strcmp(argv[i], "--tls")) tls = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--cafile")) cafile = argv[i + 1];
    }
    g_addr = server_addr(g_host, g_port);
    if (tls) tls_setup(g_host, cafile);
    int64_t *ids = NULL;
    size_t ids_n = 0, ids_cap = 0;
    conn_t *cs = calloc(nconns, sizeof(conn_t));
    size_t out_cap = g_size + 512;
    for (int i = 0; i < nconns; i++) {
        cs[i].fd = -1;
        cs[i].out = malloc(out_cap);
        cs[i].in_cap = 65536;
        cs[i].in = malloc(cs[i].in_cap);
        if (tls && !g_newconn) tls_preconnect(&cs[i]);
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
            if (g_tls) { c->ssl = tls_new(c->fd); c->hs = 1; } \
            ev.events = EPOLLIN | EPOLLOUT; ev.data.u32 = i; \
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev); \
        } else if (!c->registered) { \
            ev.events = EPOLLIN; ev.data.u32 = i; \
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev); \
        } \
        c->registered = 1; \
        c->t_sent = now_ns(); \
        c->out_len = build_request(c->out, out_cap, c->t_sent); \
        c->out_off = 0; c->in_len = 0; c->busy = 1; \
        if (!c->hs) { \
            ssize_t w = io_write(c->fd, c->ssl, c->out, c->out_len); \
            if (w > 0) c->out_off = w; \
        } \
        if (c->hs || c->out_off < c->out_len) { ev.events = EPOLLIN | EPOLLOUT; ev.data.u32 = i; epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev); } \
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
            int closed = 0;
            if (c->hs) {
                uint32_t want = 0;
                int h = tls_handshake(c->ssl, &want);
                if (h == 0) {
                    ev.events = want; ev.data.u32 = i;
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    continue;
                }
                c->hs = 0;
                if (h < 0) closed = 1;
            }
            if (!closed && c->out_off < c->out_len) {
                ssize_t w = io_write(c->fd, c->ssl, c->out + c->out_off, c->out_len - c->out_off);
                if (w > 0) c->out_off += w;
                ev.events = c->out_off == c->out_len ? EPOLLIN : EPOLLIN | EPOLLOUT; ev.data.u32 = i;
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
            if (!closed) {
                if (!(evs[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && !io_pending(c->ssl)) continue;
                int any = 0;
                do {
                    if (c->in_len == c->in_cap) { c->in_cap *= 2; c->in = realloc(c->in, c->in_cap); }
                    ssize_t r = io_read(c->fd, c->ssl, c->in + c->in_len, c->in_cap - c->in_len);
                    if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                    if (r <= 0) { closed = 1; break; }
                    c->in_len += r;
                    any = 1;
                } while (io_pending(c->ssl) > 0);
                if (!any && !closed) continue;
            }
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
                        if (ids_path) {
                            if (ids_n == ids_cap) {
                                ids_cap = ids_cap ? ids_cap * 2 : 4096;
                                ids = realloc(ids, ids_cap * sizeof *ids);
                                if (!ids) die("realloc");
                            }
                            ids[ids_n++] = id;
                        }
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
                io_close(c->fd, &c->ssl);
                c->fd = -1;
                c->hs = 0;
                c->registered = 0;
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
    if (ids_path) {
        FILE *f = fopen(ids_path, "w");
        if (!f) die("ids file");
        for (size_t j = 0; j < ids_n; j++) fprintf(f, "%lld\n", (long long)ids[j]);
        fclose(f);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "sub") || !strcmp(argv[1], "sse"))) return sub_main(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "pub")) return pub_main(argc, argv);
    fprintf(stderr, "usage: load sub|sse|pub ...\n");
    return 2;
}
