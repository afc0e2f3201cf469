/* Unit tests for the admin endpoint: address parsing, and the real server on a loopback port
 * the kernel picks (no external service). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "admin/admin.h"
#include "core/metrics.h"

static void addr_ok(const char *in, const char *host, uint16_t port)
{
    char h[64];
    uint16_t p = 1;
    struct eng_error err;
    eng_error_clear(&err);
    if (eng_admin_parse_addr(in, h, sizeof(h), &p, &err) != 0)
        fail_msg("\"%s\": %s", in ? in : "(null)", err.msg);
    assert_string_equal(h, host);
    assert_int_equal(p, port);
}

static void addr_bad(const char *in)
{
    char h[64];
    uint16_t p;
    struct eng_error err;
    eng_error_clear(&err);
    if (eng_admin_parse_addr(in, h, sizeof(h), &p, &err) != ENG_EINVAL)
        fail_msg("\"%s\" parsed", in);
    assert_false(err.retriable);
    assert_non_null(strstr(err.msg, "HOST:PORT"));
}

static void test_parse_addr(void **state)
{
    (void)state;
    addr_ok(NULL, "127.0.0.1", 9187);
    addr_ok("", "127.0.0.1", 9187);
    addr_ok("127.0.0.1:9187", "127.0.0.1", 9187);
    addr_ok("0.0.0.0:1", "0.0.0.0", 1);
    addr_ok("localhost:0", "localhost", 0);
    addr_ok("[::1]:65535", "::1", 65535);
    addr_ok("[::]:80", "::", 80);
    addr_bad("127.0.0.1");
    addr_bad("127.0.0.1:");
    addr_bad(":9187");
    addr_bad("127.0.0.1:65536");
    addr_bad("127.0.0.1:123456");
    addr_bad("127.0.0.1:80x");
    addr_bad("127.0.0.1:-1");
    addr_bad("::1:9187");
    addr_bad("[::1]9187");
    addr_bad("[::1:9187");
    addr_bad("[]:9187");
}

/* Sends one HTTP/1.0 request to port on host (an IPv4 or IPv6 literal) and returns the whole
 * answer (status line, headers, body) in a malloc'd string. */
static char *http(const char *host, uint16_t port, const char *method, const char *path)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    int family = strchr(host, ':') != NULL ? AF_INET6 : AF_INET;
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        assert_int_equal(inet_pton(AF_INET, host, &a->sin_addr), 1);
        len = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        assert_int_equal(inet_pton(AF_INET6, host, &a->sin6_addr), 1);
        len = sizeof(*a);
    }
    int fd = socket(family, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {5, 0}; /* a hung server fails the test instead of hanging it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    assert_int_equal(connect(fd, (struct sockaddr *)&ss, len), 0);
    char req[256];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: test\r\n\r\n", method, path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    struct eng_buf out = {0};
    char chunk[4096];
    ssize_t r;
    while ((r = read(fd, chunk, sizeof(chunk))) > 0)
        eng_buf_append(&out, chunk, (size_t)r);
    assert_int_equal(r, 0);
    close(fd);
    assert_non_null(out.data);
    return out.data;
}

static int status_of(const char *resp)
{
    assert_int_equal(strncmp(resp, "HTTP/1.", 7), 0);
    return atoi(resp + 9);
}

static const char *body_of(const char *resp)
{
    const char *b = strstr(resp, "\r\n\r\n");
    assert_non_null(b);
    return b + 4;
}

struct ready_state {
    bool ready;
    int calls;
};

static bool ready_hook(void *ctx, char *why, size_t whylen)
{
    struct ready_state *rs = ctx;
    rs->calls++;
    snprintf(why, whylen, "%s", rs->ready ? "clickhouse=ok" : "clickhouse=connection refused");
    return rs->ready;
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

static void test_serve(void **state)
{
    (void)state;
    struct ready_state rs = {false, 0};
    struct eng_admin_hooks hooks = {.ready = ready_hook, .ctx = &rs};
    struct eng_error err;
    eng_counter_add(eng_metrics_counter("t_admin_requests_total", "x=\"1\"", "Test."), 5);

    int fds = count_fds();
    struct eng_admin *a = eng_admin_start("127.0.0.1:0", hooks, &err);
    if (a == NULL)
        fail_msg("start: %s", err.msg);
    uint16_t port = eng_admin_port(a);
    assert_true(port != 0);

    char *r = http("127.0.0.1", port, "GET", "/healthz");
    assert_int_equal(status_of(r), 200);
    assert_string_equal(body_of(r), "ok\n");
    free(r);

    r = http("127.0.0.1", port, "GET", "/metrics");
    assert_int_equal(status_of(r), 200);
    assert_non_null(strstr(r, "Content-Type: text/plain; version=0.0.4"));
    assert_non_null(strstr(body_of(r), "# TYPE t_admin_requests_total counter\n"));
    assert_non_null(strstr(body_of(r), "\nt_admin_requests_total{x=\"1\"} 5\n"));
    free(r);

    r = http("127.0.0.1", port, "GET", "/readyz");
    assert_int_equal(status_of(r), 503);
    assert_string_equal(body_of(r), "not ready: clickhouse=connection refused\n");
    free(r);
    rs.ready = true;
    r = http("127.0.0.1", port, "GET", "/readyz");
    assert_int_equal(status_of(r), 200);
    assert_string_equal(body_of(r), "ok clickhouse=ok\n");
    free(r);
    assert_int_equal(rs.calls, 2);

    r = http("127.0.0.1", port, "HEAD", "/healthz");
    assert_int_equal(status_of(r), 200);
    assert_string_equal(body_of(r), "");
    free(r);
    r = http("127.0.0.1", port, "GET", "/nope");
    assert_int_equal(status_of(r), 404);
    free(r);
    r = http("127.0.0.1", port, "POST", "/metrics");
    assert_int_equal(status_of(r), 405);
    assert_non_null(strstr(r, "Allow: GET, HEAD"));
    free(r);

    /* the same port again: a clear error */
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)port);
    eng_error_clear(&err);
    assert_null(eng_admin_start(addr, hooks, &err));
    char want[96];
    snprintf(want, sizeof(want), "could not listen on \"%s\": Address already in use", addr);
    assert_string_equal(err.msg, want);
    assert_false(err.retriable);

    eng_admin_stop(a);
    assert_int_equal(count_fds(), fds); /* the listening socket is closed */
    eng_admin_stop(NULL);
}

static void test_ipv6_and_no_hook(void **state)
{
    (void)state;
    struct eng_admin_hooks hooks = {0};
    struct eng_error err;
    struct eng_admin *a = eng_admin_start("[::1]:0", hooks, &err);
    if (a == NULL) {
        /* a host without IPv6 loopback: nothing to test here */
        print_message("skipping: %s\n", err.msg);
        return;
    }
    char *r = http("::1", eng_admin_port(a), "GET", "/readyz");
    assert_int_equal(status_of(r), 200);
    assert_string_equal(body_of(r), "ok\n");
    free(r);
    eng_admin_stop(a);
}

static void test_bad_start(void **state)
{
    (void)state;
    struct eng_admin_hooks hooks = {0};
    struct eng_error err;
    eng_error_clear(&err);
    assert_null(eng_admin_start("nonsense", hooks, &err));
    assert_int_equal(err.code, ENG_EINVAL);
    eng_error_clear(&err);
    /* an address no interface has */
    assert_null(eng_admin_start("192.0.2.1:0", hooks, &err));
    assert_non_null(strstr(err.msg, "could not listen on \"192.0.2.1:0\": "));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_addr),
        cmocka_unit_test(test_serve),
        cmocka_unit_test(test_ipv6_and_no_hook),
        cmocka_unit_test(test_bad_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
