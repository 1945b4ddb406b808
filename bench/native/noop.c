/* A no-op KServe v2 REST target: answers every POST at once, to measure a load generator's own ceiling.
 *
 * Usage: noop PORT
 *
 * One thread, epoll, keep-alive HTTP/1.1 on 127.0.0.1:PORT (listen backlog 4096). Each request (headers,
 * then a Content-Length body; several may arrive in one read) gets a 200 whose body is a JSON header
 * carrying the emulated instance's parameters (emulated_type "noop", emulated_service_us 0, and
 * emulated_arrived_ns / emulated_done_ns: CLOCK_MONOTONIC ns when the request was whole and when the
 * reply was written), with Inference-Header-Content-Length its length. Prints "ready" once listening;
 * runs until killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LISTEN_ID UINT64_MAX

struct client {
    int fd;
    char *in;
    size_t len, cap;
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "noop: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void drop(struct client *c) {
    close(c->fd);
    free(c->in);
    free(c);
}

/* The body length a request's headers (in[0..end)) announce; 0 without Content-Length. */
static long long content_length(const char *in, size_t end) {
    const char *p = in, *stop = in + end;
    while ((p = memchr(p, '\n', (size_t)(stop - p))) && p + 15 < stop) {
        p++;
        if (strncasecmp(p, "content-length:", 15) == 0) return strtoll(p + 15, NULL, 10);
    }
    return 0;
}

/* Answer each whole request in c->in; keep the rest. 0, or -1 when the client is gone. */
static int serve(struct client *c, int64_t arrived) {
    size_t used = 0;
    for (;;) {
        char *end = memmem(c->in + used, c->len - used, "\r\n\r\n", 4);
        if (!end) break;
        size_t head = (size_t)(end - (c->in + used)) + 4;
        long long body = content_length(c->in + used, head - 4);
        if (body < 0 || c->len - used < head + (size_t)body) break;
        used += head + (size_t)body;
        char json[256], reply[512];
        int jn = snprintf(json, sizeof json,
                          "{\"model_name\":\"noop\",\"outputs\":[],\"parameters\":{\"emulated_type\":\"noop\","
                          "\"emulated_service_us\":0,\"emulated_arrived_ns\":%lld,\"emulated_done_ns\":%lld}}",
                          (long long)arrived, (long long)now_ns());
        int rn = snprintf(reply, sizeof reply,
                          "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          "Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s", jn, jn, json);
        if (send(c->fd, reply, (size_t)rn, MSG_NOSIGNAL) != rn) return -1; /* a reply this small fits the buffer */
    }
    memmove(c->in, c->in + used, c->len - used);
    c->len -= used;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: noop PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.u64 = LISTEN_ID};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) die("epoll_ctl");
    printf("ready\n");
    fflush(stdout);
    struct epoll_event ev[256];
    for (;;) {
        int k = epoll_wait(ep, ev, 256, -1);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int e = 0; e < k; e++) {
            if (ev[e].data.u64 == LISTEN_ID) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct client *c = calloc(1, sizeof *c);
                    if (!c) die("out of memory");
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) die("epoll_ctl client");
                }
                continue;
            }
            struct client *c = ev[e].data.ptr;
            if (c->cap - c->len < 16384) {
                c->cap = c->len + 65536;
                c->in = realloc(c->in, c->cap);
                if (!c->in) die("out of memory");
            }
            ssize_t n = recv(c->fd, c->in + c->len, c->cap - c->len, 0);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (n <= 0) {
                drop(c);
                continue;
            }
            c->len += (size_t)n;
            if (serve(c, now_ns()) < 0) drop(c);
        }
    }
}
