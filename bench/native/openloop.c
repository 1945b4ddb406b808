/* An open-loop HTTP/1.1 load generator: one thread, epoll, keep-alive connections.
 *
 * Usage: openloop INPUT OUTPUT
 *
 * It sends each query of a schedule at its time (open loop: a slow answer never delays the next send),
 * each on a keep-alive connection with no request outstanding (a free list, most recently used first;
 * a new connection when none is free; never two requests on one connection at a time), reads each reply
 * (Content-Length bodies; a partial read waits for the rest), and writes one record per query. The send
 * time is kept by a timerfd set `spin_us` before it, then a busy poll of epoll (answers are read while
 * it waits) to the exact time. A query that fails (connection refused or reset, a status other than
 * 200, a reply it cannot read, no reply within the timeout) is recorded with its error; the program
 * goes on. A kept-alive connection the server closed before any byte of the reply arrived is retried
 * once on a new connection (nothing was served), as kairosd's HttpWirePool does.
 *
 * INPUT, little-endian (written by bench/native_loadgen.py):
 *   "KOL1"
 *   u32 host length, host bytes        (a name or address for getaddrinfo)
 *   u32 port
 *   f64 timeout per query, seconds     (from the send)
 *   u32 spin_us                        (busy poll this long before each send; 0: the timerfd alone)
 *   u32 connections                    (opened one after another before the schedule, kept idle)
 *   u32 R; R times: u32 length, bytes  (complete HTTP/1.1 requests: request line, headers, body)
 *   u32 N; N times: f64 offset, u32 r  (query i: sent at start + offset seconds, request r)
 * Before the schedule, request 0 of the first query is sent once and must be answered with 200 (exit
 * code 3 otherwise), and `connections` connections in all are opened (a burst of new connections in
 * the run would overflow a server's listen backlog, and a dropped SYN is resent a second later); the
 * schedule starts 50 ms after that.
 *
 * OUTPUT: N records of `struct record` (88 bytes each, native byte order), in query order.
 * Standard output: one JSON line: the schedule's start, when the last query was sent, the last answer,
 * the program's CPU seconds over the schedule, connections opened, retries.
 * Times are CLOCK_MONOTONIC nanoseconds, the clock of Python's time.monotonic_ns() on this machine.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

enum error_kind { E_OK = 0, E_CONNECT = 1, E_CLOSED = 2, E_STATUS = 3, E_TIMEOUT = 4, E_PROTOCOL = 5, E_RESOURCE = 6 };

struct record {
    int32_t status;       /* HTTP status of the reply, 0 when none was read */
    int32_t error;        /* enum error_kind */
    int64_t scheduled_ns; /* when the query was due */
    int64_t sent_ns;      /* when its first byte was written (0: never sent) */
    int64_t received_ns;  /* when its whole reply was in (0: none) */
    int64_t service_us;   /* the reply's JSON header parameters (-1 when absent) */
    int64_t arrived_ns;
    int64_t done_ns;
    char type[32];        /* emulated_type, NUL-padded ("" when absent) */
};

#define TYPE_KEY "emulated_type"
#define SERVICE_KEY "emulated_service_us"
#define ARRIVED_KEY "emulated_arrived_ns"
#define DONE_KEY "emulated_done_ns"
#define MAX_HEAD 65536
#define READ_CHUNK 16384
#define TIMER_ID UINT64_MAX
#define START_DELAY_NS 50000000LL
#define WARMUP_TIMEOUT_NS 30000000000LL

enum conn_state { C_CONNECTING, C_IDLE, C_BUSY };

struct conn {
    int fd;
    int state;
    int want_out;       /* EPOLLOUT is in its epoll mask */
    int reused;         /* the request in flight went on a connection that had served one before */
    int got_bytes;      /* a byte of the reply to the request in flight arrived */
    int64_t query;      /* the query in flight, -1 for none */
    size_t out_off;     /* bytes of its request written */
    char *in;
    size_t in_len, in_cap;
    size_t head_end;    /* offset of the body; 0 while the headers are incomplete */
    long long content_length;
    long long ihcl;     /* Inference-Header-Content-Length, -1 when absent */
    int status;
    int close_after;    /* the reply said Connection: close */
};

struct request { char *bytes; uint32_t len; };

static struct {
    int ep, timer;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int64_t timeout_ns, spin_ns;
    uint32_t preconnect;
    struct request *req;
    uint32_t n_req;
    uint32_t n;          /* queries in the schedule; query n is the warm-up */
    int64_t *sched;      /* per query, absolute ns */
    uint32_t *which;     /* per query, its request */
    struct record *rec;  /* n + 1 */
    int64_t *conn_of;    /* per query, its connection's slot, -1 */
    unsigned char *done, *retried;
    int64_t *fifo;       /* queries in the order sent: their deadlines are in the same order */
    size_t fifo_head, fifo_tail;
    struct conn **slot;  /* connections by slot; NULL for a free slot */
    size_t n_slots;
    int64_t *free_slots; size_t n_free_slots;
    int64_t *idle; size_t n_idle; /* idle connections, used last-in first-out */
    int64_t armed_ns;    /* the timerfd's expiry, 0: disarmed */
    uint64_t finished, opened, retries;
    int64_t last_received;
} g;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "openloop: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die("out of memory");
    return q;
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) die("out of memory");
    return p;
}

/* ---------------------------------------------------------------------------------------------- */
/* input */

static void read_exact(FILE *f, void *buf, size_t n) {
    if (n && fread(buf, 1, n, f) != n) {
        fprintf(stderr, "openloop: input truncated\n");
        exit(2);
    }
}

static uint32_t read_u32(FILE *f) { uint32_t v; read_exact(f, &v, 4); return v; }
static double read_f64(FILE *f) { double v; read_exact(f, &v, 8); return v; }

static void resolve(const char *host, uint32_t port) {
    char service[16];
    struct addrinfo hints = {0}, *res;
    snprintf(service, sizeof service, "%u", port);
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "openloop: cannot resolve %s: %s\n", host, gai_strerror(rc));
        exit(2);
    }
    memcpy(&g.addr, res->ai_addr, res->ai_addrlen);
    g.addr_len = res->ai_addrlen;
    freeaddrinfo(res);
}

static void read_input(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    char magic[4];
    read_exact(f, magic, 4);
    if (memcmp(magic, "KOL1", 4) != 0) {
        fprintf(stderr, "openloop: %s is not an input file (magic)\n", path);
        exit(2);
    }
    uint32_t host_len = read_u32(f);
    char *host = xcalloc(host_len + 1, 1);
    read_exact(f, host, host_len);
    uint32_t port = read_u32(f);
    resolve(host, port);
    free(host);
    g.timeout_ns = (int64_t)(read_f64(f) * 1e9);
    g.spin_ns = (int64_t)read_u32(f) * 1000;
    g.preconnect = read_u32(f);
    g.n_req = read_u32(f);
    g.req = xcalloc(g.n_req, sizeof *g.req);
    for (uint32_t r = 0; r < g.n_req; r++) {
        g.req[r].len = read_u32(f);
        g.req[r].bytes = xrealloc(NULL, g.req[r].len);
        read_exact(f, g.req[r].bytes, g.req[r].len);
    }
    g.n = read_u32(f);
    g.sched = xcalloc(g.n + 1, sizeof *g.sched);
    g.which = xcalloc(g.n + 1, sizeof *g.which);
    for (uint32_t i = 0; i < g.n; i++) {
        g.sched[i] = (int64_t)(read_f64(f) * 1e9); /* an offset until the start is known */
        g.which[i] = read_u32(f);
        if (g.which[i] >= g.n_req) {
            fprintf(stderr, "openloop: query %u names request %u of %u\n", i, g.which[i], g.n_req);
            exit(2);
        }
    }
    fclose(f);
    if (g.n == 0 || g.n_req == 0) {
        fprintf(stderr, "openloop: no queries\n");
        exit(2);
    }
    g.which[g.n] = g.which[0];
}

/* ---------------------------------------------------------------------------------------------- */
/* records */

/* The integer after `"key"` and a colon in s[0..n), or -1. */
static int64_t json_int(const char *s, size_t n, const char *key) {
    char quoted[64];
    int k = snprintf(quoted, sizeof quoted, "\"%s\"", key);
    const char *p = memmem(s, n, quoted, (size_t)k), *end = s + n;
    if (!p) return -1;
    p += k;
    while (p < end && (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    int neg = p < end && *p == '-';
    if (neg) p++;
    if (p >= end || *p < '0' || *p > '9') return -1;
    int64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
    return neg ? -v : v;
}

/* The string after `"key"` and a colon in s[0..n) into out (at most size - 1 bytes), or "". */
static void json_str(const char *s, size_t n, const char *key, char *out, size_t size) {
    char quoted[64];
    int k = snprintf(quoted, sizeof quoted, "\"%s\"", key);
    const char *p = memmem(s, n, quoted, (size_t)k), *end = s + n;
    memset(out, 0, size);
    if (!p) return;
    p += k;
    while (p < end && (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    if (p >= end || *p != '"') return;
    p++;
    size_t i = 0;
    while (p < end && *p != '"' && i + 1 < size) out[i++] = *p++;
}

static void finish(int64_t q, int error, int status, int64_t at) {
    struct record *r = &g.rec[q];
    r->error = error;
    r->status = status;
    if (error == E_OK) {
        r->received_ns = at;
        if (at > g.last_received && (uint64_t)q < g.n) g.last_received = at;
    }
    g.done[q] = 1;
    g.conn_of[q] = -1;
    g.finished++;
}

/* ---------------------------------------------------------------------------------------------- */
/* connections */

static void epoll_mod(struct conn *c, int64_t id, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (want_out ? EPOLLOUT : 0), .data.u64 = (uint64_t)id};
    if (epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl MOD");
    c->want_out = want_out;
}

static void idle_remove(int64_t id) {
    for (size_t k = 0; k < g.n_idle; k++)
        if (g.idle[k] == id) {
            memmove(&g.idle[k], &g.idle[k + 1], (g.n_idle - k - 1) * sizeof *g.idle);
            g.n_idle--;
            return;
        }
}

static void conn_close(int64_t id) {
    struct conn *c = g.slot[id];
    if (c->state == C_IDLE) idle_remove(id);
    close(c->fd); /* also leaves the epoll set */
    free(c->in);
    free(c);
    g.slot[id] = NULL;
    g.free_slots[g.n_free_slots++] = id;
}

/* A new non-blocking connection (connect under way), or -1 with errno set. */
static int64_t conn_open(void) {
    int fd = socket(g.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&g.addr, g.addr_len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    int64_t id;
    if (g.n_free_slots) {
        id = g.free_slots[--g.n_free_slots];
    } else {
        id = (int64_t)g.n_slots++;
        g.slot = xrealloc(g.slot, g.n_slots * sizeof *g.slot);
        g.free_slots = xrealloc(g.free_slots, g.n_slots * sizeof *g.free_slots);
        g.idle = xrealloc(g.idle, g.n_slots * sizeof *g.idle);
    }
    struct conn *c = xcalloc(1, sizeof *c);
    c->fd = fd;
    c->state = C_CONNECTING;
    c->query = -1;
    c->want_out = 1;
    g.slot[id] = c;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.u64 = (uint64_t)id};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl ADD");
    g.opened++;
    return id;
}

static void dispatch(int64_t q, int fresh);

/* The connection failed with its query (if any) in flight: retry the query once on a new connection
 * when nothing of the reply came on a reused connection, else record the error. */
static void conn_fail(int64_t id, int error) {
    struct conn *c = g.slot[id];
    int64_t q = c->query;
    int retry = q >= 0 && error == E_CLOSED && c->reused && !c->got_bytes && !g.retried[q];
    conn_close(id);
    if (q < 0 || g.done[q]) return;
    if (retry) {
        g.retried[q] = 1;
        g.retries++;
        dispatch(q, 1);
    } else {
        finish(q, error, 0, 0);
    }
}

/* Write what is left of the request in flight; EPOLLOUT while some is. */
static void conn_write(int64_t id) {
    struct conn *c = g.slot[id];
    const struct request *r = &g.req[g.which[c->query]];
    while (c->out_off < r->len) {
        ssize_t k = send(c->fd, r->bytes + c->out_off, r->len - c->out_off, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                if (!c->want_out) epoll_mod(c, id, 1);
                return;
            }
            conn_fail(id, E_CLOSED);
            return;
        }
        c->out_off += (size_t)k;
    }
    if (c->want_out) epoll_mod(c, id, 0);
}

/* Send query q on an idle connection (a new one when none is idle, or when `fresh`). */
static void dispatch(int64_t q, int fresh) {
    int64_t id = -1;
    if (!fresh && g.n_idle) id = g.idle[--g.n_idle];
    int reused = id >= 0;
    if (id < 0) {
        id = conn_open();
        if (id < 0) {
            finish(q, (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) ? E_RESOURCE : E_CONNECT,
                   0, 0);
            return;
        }
    }
    struct conn *c = g.slot[id];
    c->query = q;
    c->reused = reused;
    c->got_bytes = 0;
    c->out_off = 0;
    c->in_len = 0;
    c->head_end = 0;
    g.conn_of[q] = id;
    if (c->state == C_IDLE) {
        c->state = C_BUSY;
        conn_write(id);
    } /* else connecting: written once the connection is up */
}

/* Parse the status line and the headers ending at c->in + end. 0, or -1 for a reply it cannot read. */
static int parse_head(struct conn *c, size_t end) {
    const char *s = c->in, *stop = c->in + end;
    if (end < 12 || memcmp(s, "HTTP/1.", 7) != 0 || s[8] != ' ') return -1;
    c->status = atoi(s + 9);
    if (c->status < 100 || c->status > 999) return -1;
    c->content_length = -1;
    c->ihcl = -1;
    c->close_after = 0;
    const char *line = memchr(s, '\n', (size_t)(stop - s));
    while (line && line + 1 < stop) {
        line++;
        const char *eol = memchr(line, '\n', (size_t)(stop - line));
        if (!eol) eol = stop;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t name_len = (size_t)(colon - line);
            const char *v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            if (name_len == 14 && strncasecmp(line, "content-length", 14) == 0) {
                c->content_length = strtoll(v, NULL, 10);
            } else if (name_len == 31 && strncasecmp(line, "inference-header-content-length", 31) == 0) {
                c->ihcl = strtoll(v, NULL, 10);
            } else if (name_len == 10 && strncasecmp(line, "connection", 10) == 0) {
                c->close_after = strncasecmp(v, "close", 5) == 0;
            } else if (name_len == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                return -1; /* chunked bodies are not read here */
            }
        }
        line = eol;
    }
    if (c->content_length < 0) {
        if (c->status == 204 || c->status == 304 || c->status < 200) c->content_length = 0;
        else return -1;
    }
    return 0;
}

/* The reply to the query in flight is whole: record it, and keep the connection for another. */
static void conn_complete(int64_t id, int64_t at) {
    struct conn *c = g.slot[id];
    int64_t q = c->query;
    struct record *r = &g.rec[q];
    const char *body = c->in + c->head_end;
    size_t body_len = (size_t)c->content_length;
    size_t json_len = (c->ihcl >= 0 && (size_t)c->ihcl <= body_len) ? (size_t)c->ihcl : body_len;
    int extra = c->in_len > c->head_end + body_len; /* bytes nobody asked for: the connection is unusable */
    if (c->status == 200) {
        r->service_us = json_int(body, json_len, SERVICE_KEY);
        r->arrived_ns = json_int(body, json_len, ARRIVED_KEY);
        r->done_ns = json_int(body, json_len, DONE_KEY);
        json_str(body, json_len, TYPE_KEY, r->type, sizeof r->type);
    }
    finish(q, c->status == 200 ? E_OK : E_STATUS, c->status, at);
    c->query = -1;
    c->in_len = 0;
    c->head_end = 0;
    if (extra || c->close_after) {
        conn_close(id);
        return;
    }
    c->state = C_IDLE;
    g.idle[g.n_idle++] = id;
}

static void conn_read(int64_t id) {
    struct conn *c = g.slot[id];
    if (c->in_cap - c->in_len < READ_CHUNK) {
        c->in_cap = c->in_len + 2 * READ_CHUNK;
        c->in = xrealloc(c->in, c->in_cap);
    }
    ssize_t k = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    int64_t at = now_ns();
    if (k < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (k <= 0) { /* closed by the server, or reset */
        conn_fail(id, E_CLOSED);
        return;
    }
    if (c->state != C_BUSY) { /* bytes nobody asked for (an idle connection): drop it */
        conn_close(id);
        return;
    }
    c->got_bytes = 1;
    c->in_len += (size_t)k;
    if (!c->head_end) {
        char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!end) {
            if (c->in_len > MAX_HEAD) conn_fail(id, E_PROTOCOL);
            return;
        }
        if (parse_head(c, (size_t)(end - c->in)) < 0) {
            conn_fail(id, E_PROTOCOL);
            return;
        }
        c->head_end = (size_t)(end - c->in) + 4;
    }
    if (c->in_len >= c->head_end + (size_t)c->content_length) conn_complete(id, at);
}

static void conn_event(int64_t id, uint32_t events) {
    struct conn *c = g.slot[id];
    if (!c) return;
    if (c->state == C_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            conn_fail(id, E_CONNECT);
            return;
        }
        if (c->query < 0) { /* opened ahead of need */
            c->state = C_IDLE;
            epoll_mod(c, id, 0);
            g.idle[g.n_idle++] = id;
            return;
        }
        c->state = C_BUSY;
        conn_write(id);
        return;
    }
    if (c->state == C_BUSY && (events & EPOLLOUT)) {
        conn_write(id);
        if (g.slot[id] != c) return; /* failed, and its slot maybe taken by the retry's new connection */
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) conn_read(id);
}

/* ---------------------------------------------------------------------------------------------- */
/* the loop */

static void arm(int64_t at_ns) {
    if (at_ns == g.armed_ns) return;
    struct itimerspec its = {0};
    its.it_value.tv_sec = at_ns / 1000000000LL;
    its.it_value.tv_nsec = at_ns % 1000000000LL;
    if (timerfd_settime(g.timer, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
    g.armed_ns = at_ns;
}

/* One epoll_wait (timeout in ms: -1 forever, 0 a poll) and the events it returns. */
static void poll_io(int timeout_ms) {
    struct epoll_event ev[256];
    int k = epoll_wait(g.ep, ev, 256, timeout_ms);
    if (k < 0) {
        if (errno == EINTR) return;
        die("epoll_wait");
    }
    for (int e = 0; e < k; e++) {
        if (ev[e].data.u64 == TIMER_ID) {
            uint64_t expirations;
            if (read(g.timer, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("timerfd read");
            g.armed_ns = 0;
        } else {
            conn_event((int64_t)ev[e].data.u64, ev[e].events);
        }
    }
}

/* Queries past their deadline (sent + timeout) with no answer: recorded as timed out, their
 * connection closed. The deadlines come in the order the queries were sent. Returns the next deadline
 * still pending, or 0. */
static int64_t expire(int64_t now) {
    while (g.fifo_head < g.fifo_tail) {
        int64_t q = g.fifo[g.fifo_head];
        if (g.done[q]) {
            g.fifo_head++;
            continue;
        }
        int64_t deadline = g.rec[q].sent_ns + g.timeout_ns;
        if (deadline > now) return deadline;
        g.fifo_head++;
        int64_t id = g.conn_of[q];
        if (id >= 0 && g.slot[id] && g.slot[id]->query == q) {
            g.slot[id]->query = -1;
            conn_close(id);
        }
        if (!g.done[q]) finish(q, E_TIMEOUT, 0, 0);
    }
    return 0;
}

static void send_query(int64_t q) {
    g.rec[q].sent_ns = now_ns();
    g.fifo[g.fifo_tail++] = q;
    dispatch(q, 0);
}

static int ms_until(int64_t at, int64_t now) {
    if (at <= now) return 0;
    int64_t ms = (at - now + 999999) / 1000000;
    return ms > 1000 ? 1000 : (int)ms;
}

/* Read answers and expire what times out until `target` queries are finished. */
static void drain(uint64_t target) {
    while (g.finished < target) {
        int64_t next = expire(now_ns());
        if (g.finished >= target) break;
        poll_io(next ? ms_until(next, now_ns()) : 1000);
    }
}

static void run_schedule(void) {
    uint32_t next = 0;
    while (next < g.n) {
        int64_t now = now_ns();
        for (int burst = 1; next < g.n && g.sched[next] <= now; burst++) {
            send_query(next++);
            if (burst % 8 == 0) poll_io(0); /* behind schedule: read answers, so their connections are free again */
            now = now_ns();
        }
        int64_t deadline = expire(now);
        if (next >= g.n) break;
        int64_t due = g.sched[next];
        if (due - now <= g.spin_ns) {
            poll_io(0); /* busy poll to the send time, reading answers meanwhile */
            continue;
        }
        arm(due - g.spin_ns);
        int timeout = deadline ? ms_until(deadline, now) : -1;
        poll_io(timeout);
    }
}

/* Open idle connections, one after another, until `n` are idle; stop at the first that fails. */
static void preconnect(uint32_t n) {
    while (g.n_idle < n) {
        int64_t id = conn_open();
        if (id < 0) return;
        struct conn *c = g.slot[id];
        int64_t give_up = now_ns() + 5000000000LL;
        while (g.slot[id] == c && c->state == C_CONNECTING && now_ns() < give_up) poll_io(10);
        if (g.slot[id] != c || c->state != C_IDLE) return;
    }
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: openloop INPUT OUTPUT\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    read_input(argv[1]);
    g.rec = xcalloc(g.n + 1, sizeof *g.rec);
    g.conn_of = xcalloc(g.n + 1, sizeof *g.conn_of);
    g.done = xcalloc(g.n + 1, 1);
    g.retried = xcalloc(g.n + 1, 1);
    g.fifo = xcalloc(2 * (size_t)g.n + 2, sizeof *g.fifo);
    for (uint32_t i = 0; i <= g.n; i++) {
        g.conn_of[i] = -1;
        g.rec[i].service_us = g.rec[i].arrived_ns = g.rec[i].done_ns = -1;
    }
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.ep < 0) die("epoll_create1");
    g.timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (g.timer < 0) die("timerfd_create");
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TIMER_ID};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, g.timer, &tev) < 0) die("epoll_ctl timer");

    /* the warm-up query (record n): one connection opened and a first answer before the schedule */
    int64_t timeout = g.timeout_ns;
    g.timeout_ns = WARMUP_TIMEOUT_NS;
    send_query(g.n);
    drain(1);
    g.timeout_ns = timeout;
    if (g.rec[g.n].status != 200) {
        fprintf(stderr, "openloop: the warm-up query failed: error %d, HTTP status %d\n", g.rec[g.n].error,
                g.rec[g.n].status);
        return 3;
    }
    g.finished = 0;
    g.last_received = 0;
    preconnect(g.preconnect);

    int64_t start = now_ns() + START_DELAY_NS;
    for (uint32_t i = 0; i < g.n; i++) {
        g.sched[i] += start;
        g.rec[i].scheduled_ns = g.sched[i];
    }
    double cpu0 = cpu_s();
    run_schedule();
    int64_t sent_end = now_ns();
    drain(g.n);
    int64_t end = now_ns();
    double cpu1 = cpu_s();

    FILE *out = fopen(argv[2], "wb");
    if (!out) die(argv[2]);
    if (fwrite(g.rec, sizeof *g.rec, g.n, out) != g.n) die("write output");
    if (fclose(out) != 0) die("close output");
    printf("{\"start_ns\": %lld, \"sent_end_ns\": %lld, \"end_ns\": %lld, \"last_received_ns\": %lld, "
           "\"cpu_s\": %.6f, \"connections\": %llu, \"retries\": %llu, \"record_bytes\": %zu}\n",
           (long long)start, (long long)sent_end, (long long)end, (long long)g.last_received, cpu1 - cpu0,
           (unsigned long long)g.opened, (unsigned long long)g.retries, sizeof(struct record));
    return 0;
}
