/* A webhook receiver for the outbound client benchmark: HTTP/1.1 keep-alive,
 * one epoll loop, no threads, so one pinned core answers far more POSTs than
 * any Python client can send, and its CPU share shows that headroom.
 * Compiled by benchmarks/outbound_clients.py into a temporary directory
 * (gcc -O2); no binary is committed.
 *
 *   responder N
 *       Listens on N ports of 127.0.0.1 (each bound to port 0), prints
 *       {"ports":[...]} and answers every request "200 ok" on the connection
 *       it came on (requests are framed by Content-Length; pipelined ones are
 *       answered in order). Commands on stdin, one per line:
 *         stats   print {"accepted":A,"requests":R,"open":O} (totals so far)
 *       EOF on stdin ends it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXPORTS 64
#define BUF 65536

static const char REPLY[] = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

struct conn {
    int fd;
    size_t len;
    char buf[BUF];
};

static int listeners[MAXPORTS];
static int nports;
static long long accepted, requests, open_now;

/* Answers every complete request at the start of c->buf; returns -1 to close. */
static int serve(struct conn *c) {
    char out[64 * (sizeof REPLY)];
    size_t nout = 0;
    for (;;) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end) {
            if (c->len == BUF) return -1; /* a head larger than the buffer */
            break;
        }
        size_t head = (size_t)(end - c->buf) + 4;
        long body = 0;
        for (char *p = c->buf; p < end; p++) {
            if ((p == c->buf || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) {
                body = strtol(p + 15, NULL, 10);
                break;
            }
        }
        if (body < 0 || head + (size_t)body > BUF) return -1;
        if (c->len < head + (size_t)body) break;
        memmove(c->buf, c->buf + head + body, c->len - head - body);
        c->len -= head + body;
        requests++;
        memcpy(out + nout, REPLY, sizeof REPLY - 1);
        nout += sizeof REPLY - 1;
        if (nout + sizeof REPLY > sizeof out) break;
    }
    if (nout && write(c->fd, out, nout) != (ssize_t)nout) return -1;
    return 0;
}

int main(int argc, char **argv) {
    nports = argc > 1 ? atoi(argv[1]) : 1;
    if (nports < 1 || nports > MAXPORTS) return 2;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    printf("{\"ports\":[");
    for (int i = 0; i < nports; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t sl = sizeof sa;
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 4096) ||
            getsockname(fd, (struct sockaddr *)&sa, &sl)) {
            perror("listen");
            return 1;
        }
        listeners[i] = fd;
        ev.data.u64 = (unsigned long long)i; /* listeners: small numbers; conns: pointers */
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        printf("%s%d", i ? "," : "", ntohs(sa.sin_port));
    }
    printf("]}\n");
    fflush(stdout);
    ev.data.u64 = MAXPORTS;
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    struct epoll_event events[256];
    char line[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; i++) {
            unsigned long long tag = events[i].data.u64;
            if (tag < MAXPORTS) {
                int fd;
                while ((fd = accept4(listeners[tag], NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                    accepted++;
                    open_now++;
                }
            } else if (tag == MAXPORTS) {
                ssize_t r = read(0, line, sizeof line - 1);
                if (r <= 0) return 0;
                printf("{\"accepted\":%lld,\"requests\":%lld,\"open\":%lld}\n", accepted, requests, open_now);
                fflush(stdout);
            } else {
                struct conn *c = events[i].data.ptr;
                /* Level-triggered: one read per wakeup; what is left wakes it again. */
                ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);
                int dead = r == 0 || (r < 0 && errno != EAGAIN);
                if (r > 0) {
                    c->len += (size_t)r;
                    dead = serve(c) < 0;
                }
                if (dead) {
                    close(c->fd);
                    free(c);
                    open_now--;
                }
            }
        }
    }
}
