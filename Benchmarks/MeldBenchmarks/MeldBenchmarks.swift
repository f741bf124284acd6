import Benchmark
import Meld

/// Merge kernels on 4M-element tensors, K = 3, through the Swift API (zero-copy views).
/// The plain executable Benchmarks/meld-bench reports the same kernels as ratios to STREAM.
let benchmarks: @Sendable () -> Void = {
    let n = 4 << 20
    func tensor(_ seed: Int) -> [Float] { (0..<n).map { i in Float(((i &* 2654435761 &+ seed &* 40503) % 2001) - 1000) * 1e-4 } }
    let base = tensor(1)
    let models = (0..<3).map { k in zip(tensor(10 + k), base).map { $0 * 0.01 + $1 } }
    let weights: [Float] = [1, 0.6, 0.8], densities: [Float] = [0.2, 0.5, 0.35]
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .peakMemoryResident], maxDuration: .seconds(2))

    for (name, isa) in [("avx512", ISA.avx512), ("avx2", ISA.avx2), ("scalar", ISA.scalar)] where isa.isSupported {
        let ctx = try! Context(threads: 2, isa: isa)
        Benchmark("linear f32 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.linear(models, weights: weights) as [Float]) }
        }
        Benchmark("task_arithmetic f32 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.taskArithmetic(base: base, models, weights: weights) as [Float]) }
        }
        Benchmark("ties f32 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.ties(base: base, models, weights: weights, densities: densities) as [Float]) }
        }
        Benchmark("select f32 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.select(models[0], density: 0.2)) }
        }
    }
}
