/*
 * dpdk-copy-bench: copy throughput of the first DPDK dmadev (the vDSA's WQ under DPDK's idxd PMD)
 * against the CPU's memcpy, measured side by side in one run, every copy checked byte for byte.
 *
 * Built by resources/guests/linux/build.sh against Debian's libdpdk-dev 22.11 and run by
 * init-dpdk.sh in the DPDK guest. For each transfer size, ROUNDS rounds of BURST copies between
 * distinct IOVA-contiguous buffers (one memzone each): the DMA round is enqueued, submitted once and
 * polled to completion; the CPU round copies the same buffers with memcpy. Only the copies are timed
 * (CLOCK_MONOTONIC); the destinations are cleared before and compared after every round, untimed.
 *
 * Output, one line per size (parsed by tests/tests/linux_dpdk.rs):
 *   PERF size=<bytes> ops=<n> bytes=<total> dma_ns=<t> memcpy_ns=<t> dma_mbps=<MB/s> memcpy_mbps=<MB/s>
 *        ratio=<dma/memcpy> verified=<copies checked>
 * then `PERF-DONE dev=<name>`. Exits non-zero on any failed, short or mismatching copy.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rte_dmadev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_memzone.h>
#include <rte_random.h>

#define BURST 16
#define MAX_SIZE (1u << 20)
/* A round that has not completed after this long is a failure (the rig is slow, not this slow). */
#define ROUND_TIMEOUT_NS (10ull * 1000 * 1000 * 1000)

static const struct {
	uint32_t size;
	uint32_t rounds;
} cases[] = { { 4096, 256 }, { 65536, 64 }, { MAX_SIZE, 8 } };

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static const struct rte_memzone *buffer(const char *kind, int i)
{
	char name[RTE_MEMZONE_NAMESIZE];

	snprintf(name, sizeof(name), "bench-%s-%d", kind, i);
	/* Aligned to its size: one buffer never straddles a 2 MiB page, so it is IOVA-contiguous. */
	return rte_memzone_reserve_aligned(name, MAX_SIZE, rte_socket_id(), RTE_MEMZONE_IOVA_CONTIG,
					   MAX_SIZE);
}

/* Clear the destinations and give the sources a fresh pattern. */
static void prepare(const struct rte_memzone **src, const struct rte_memzone **dst, uint32_t size)
{
	for (int i = 0; i < BURST; i++) {
		uint64_t *s = src[i]->addr;

		for (uint32_t w = 0; w < size / 8; w++)
			s[w] = rte_rand();
		memset(dst[i]->addr, 0, size);
	}
}

static bool check(const struct rte_memzone **src, const struct rte_memzone **dst, uint32_t size,
		  const char *what, uint32_t round)
{
	for (int i = 0; i < BURST; i++) {
		if (memcmp(src[i]->addr, dst[i]->addr, size) != 0) {
			fprintf(stderr, "PERF-ERROR %s size=%u round=%u copy=%d: destination differs\n",
				what, size, round, i);
			return false;
		}
	}
	return true;
}

/* One DMA round: BURST copies, one doorbell, polled until all completed. Returns its ns, 0 on error. */
static uint64_t dma_round(int16_t dev, const struct rte_memzone **src, const struct rte_memzone **dst,
			  uint32_t size)
{
	uint64_t t0 = now_ns();
	uint16_t done = 0, last;
	bool error = false;

	for (int i = 0; i < BURST; i++) {
		uint64_t flags = i == BURST - 1 ? RTE_DMA_OP_FLAG_SUBMIT : 0;

		if (rte_dma_copy(dev, 0, src[i]->iova, dst[i]->iova, size, flags) < 0) {
			fprintf(stderr, "PERF-ERROR rte_dma_copy refused copy %d of size %u\n", i, size);
			return 0;
		}
	}
	while (done < BURST) {
		done += rte_dma_completed(dev, 0, BURST - done, &last, &error);
		if (error) {
			fprintf(stderr, "PERF-ERROR the device reported a failed copy (size %u)\n", size);
			return 0;
		}
		if (now_ns() - t0 > ROUND_TIMEOUT_NS) {
			fprintf(stderr, "PERF-ERROR %u of %d copies completed after 10 s\n", done, BURST);
			return 0;
		}
	}
	return now_ns() - t0 ?: 1;
}

int main(int argc, char **argv)
{
	const struct rte_memzone *src[BURST], *dst[BURST];
	struct rte_dma_conf conf = { .nb_vchans = 1 };
	struct rte_dma_vchan_conf vconf = { .direction = RTE_DMA_DIR_MEM_TO_MEM, .nb_desc = 64 };
	struct rte_dma_info info;
	int16_t dev = -1;
	int16_t i;
	int rc = 1;

	if (rte_eal_init(argc, argv) < 0) {
		fprintf(stderr, "PERF-ERROR rte_eal_init failed\n");
		return 1;
	}
	RTE_DMA_FOREACH_DEV(i) {
		if (rte_dma_info_get(i, &info) == 0 && strcmp(info.dev_name, "dma_skeleton") != 0) {
			dev = i;
			break;
		}
	}
	if (dev < 0) {
		fprintf(stderr, "PERF-ERROR no dmadev (is the device bound and -a given?)\n");
		return 1;
	}
	if (rte_dma_configure(dev, &conf) != 0 || rte_dma_vchan_setup(dev, 0, &vconf) != 0 ||
	    rte_dma_start(dev) != 0) {
		fprintf(stderr, "PERF-ERROR configuring %s failed\n", info.dev_name);
		return 1;
	}
	for (int b = 0; b < BURST; b++) {
		src[b] = buffer("src", b);
		dst[b] = buffer("dst", b);
		if (src[b] == NULL || dst[b] == NULL) {
			fprintf(stderr, "PERF-ERROR cannot reserve %d IOVA-contiguous 1 MiB buffers: %s\n",
				2 * BURST, rte_strerror(rte_errno));
			goto out;
		}
	}
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		uint32_t size = cases[c].size;
		uint64_t dma_ns = 0, cpu_ns = 0, verified = 0;

		for (uint32_t r = 0; r < cases[c].rounds; r++) {
			uint64_t t;

			prepare(src, dst, size);
			t = dma_round(dev, src, dst, size);
			if (t == 0 || !check(src, dst, size, "dma", r))
				goto out;
			dma_ns += t;
			verified += BURST;

			prepare(src, dst, size);
			t = now_ns();
			for (int b = 0; b < BURST; b++)
				memcpy(dst[b]->addr, src[b]->addr, size);
			cpu_ns += (now_ns() - t) ?: 1;
			if (!check(src, dst, size, "memcpy", r))
				goto out;
		}
		uint64_t ops = (uint64_t)cases[c].rounds * BURST, bytes = ops * size;
		double dma_mbps = (double)bytes * 1e3 / (double)dma_ns;
		double cpu_mbps = (double)bytes * 1e3 / (double)cpu_ns;

		printf("PERF size=%u ops=%" PRIu64 " bytes=%" PRIu64 " dma_ns=%" PRIu64 " memcpy_ns=%" PRIu64
		       " dma_mbps=%.1f memcpy_mbps=%.1f ratio=%.3f verified=%" PRIu64 "\n",
		       size, ops, bytes, dma_ns, cpu_ns, dma_mbps, cpu_mbps, dma_mbps / cpu_mbps, verified);
		fflush(stdout);
	}
	printf("PERF-DONE dev=%s\n", info.dev_name);
	rc = 0;
out:
	/* Stopped before exit frees the hugepages a failed round's copies may still target. */
	rte_dma_stop(dev);
	rte_dma_close(dev);
	rte_eal_cleanup();
	return rc;
}
