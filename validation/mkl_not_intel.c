/* Make the MKL inside PyTorch answer its CPU-vendor questions as on an AMD Zen, on an Intel CPU.
 *
 * MKL chooses some kernels by CPU vendor, not only by instruction set: its documentation on
 * conditional numerical reproducibility says MKL_CBWR=AVX2 (numerics.env) holds on Intel CPUs
 * only, and that other CPUs run the AUTO branch instead. libtorch_cpu.so calls MKL's vendor
 * queries through its PLT, so preloading this library answers them: "not an Intel CPU; a Zen".
 * validation/measure_spread.py uses it as one more perturbation (mkl-not-intel), so that the
 * spreads spread mode allows include what MKL's non-Intel code paths do to every number; and
 *
 *     cc -shared -fPIC -O2 -o /tmp/mkl_not_intel.so validation/mkl_not_intel.c
 *     LD_PRELOAD=/tmp/mkl_not_intel.so python validation/numerics_battery.py --out not-intel.json
 *
 * lists the kernels that follow the vendor (book/checks.md, "What follows the CPU vendor:
 * MKL"). It is not an AMD: its instruction set, caches and the rest of MKL's choices
 * stay this machine's. */
int mkl_serv_intel_cpu_true(void) { return 0; }
int mkl_serv_intel_cpu(void) { return 0; }
int mkl_serv_cpuiszen(void) { return 1; }
