/* engage: a sink that writes each enriched event as one JSON line to a file descriptor
 * (stdout by default). For debugging, pipes into other tools, and benchmarks that measure
 * the source and enrichment alone. Ownership: the sink does not close the descriptor. */
#ifndef ENG_SINK_STDOUT_H
#define ENG_SINK_STDOUT_H

#include "sink.h"

/* Creates the sink on fd. "Durable" here means handed to the kernel by write(2). */
struct eng_sink *eng_stdout_sink_create(int fd);

#endif
