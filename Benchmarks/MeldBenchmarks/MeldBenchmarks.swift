import Benchmark
import Meld

/// Meld's kernels through the Swift API, on every ISA path the machine has: the merge kernels on
/// 4M-element tensors (K = 3, f32 and bf16), sparse apply, the geometric merges, and the MoE
/// grouped matmul and FFN on Qwen3-30B-A3B's expert shapes. The plain executable
/// Benchmarks/meld-bench reports the same kernels as ratios to STREAM and to a peak-FMA loop.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .peakMemoryResident], maxDuration: .seconds(2))
    let n = 4 << 20
    func tensor(_ seed: Int, count: Int = n) -> [Float] {
        (0..<count).map { i in Float(((i &* 2654435761 &+ seed &* 40503) % 2001) - 1000) * 1e-4 }
    }
    let base = tensor(1)
    let models = (0..<3).map { k in zip(tensor(10 + k), base).map { $0 * 0.01 + $1 } }
    let baseBF = base.map(BFloat16.init), modelsBF = models.map { $0.map(BFloat16.init) }
    let weights: [Float] = [1, 0.6, 0.8], densities: [Double] = [0.2, 0.5, 0.35]

    // MoE: Qwen3-30B-A3B gate_up (E 128, N = 2I = 1536, K = H = 2048) is too large to pack per ISA
    // here, so 16 of its experts, with 8 of 16 selected per token
    let (experts, hidden, inter, topK) = (16, 2048, 768, 8)
    let gateUp = tensor(3, count: experts * 2 * inter * hidden).map { $0 * 0.05 }
    let down = tensor(4, count: experts * hidden * inter).map { $0 * 0.05 }

    for isa in ISA.allCases where isa != .auto && isa.isSupported {
        let ctx = try! Context(threads: 2, isa: isa)
        let name = "\(isa)"
        Benchmark("linear f32 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.linear(models, weights: weights) as [Float]) }
        }
        Benchmark("task_arithmetic f32 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.taskArithmetic(base: base, models, weights: weights) as [Float]) }
        }
        Benchmark("ties f32 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.ties(base: base, models, weights: weights, densities: densities) as [Float]) }
        }
        Benchmark("ties bf16 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.ties(base: baseBF, modelsBF, weights: weights, densities: densities) as [BFloat16]) }
        }
        Benchmark("select f32 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.select(models[0], density: 0.2)) }
        }
        let dare = (0..<3).map { Sparsifier.dare(densities[$0], seed: 42, stream: UInt64($0)) }
        Benchmark("dare_ties f32 \(name)") { b in
            for _ in b.scaledIterations {
                blackHole(try ctx.mergeTaskVectors(base: base, models, weights: weights, sparsifiers: dare,
                                                   options: MergeOptions(consensus: .sum, divisor: .weightSum), as: Float.self))
            }
        }
        let packed = try! (0..<3).map { k in
            try ctx.pack(base: base, models[k], mask: try ctx.sparsifyMask(base: base, models[k], .magnitude(0.1)).mask, as: BFloat16.self)
        }
        Benchmark("sparse_apply K3 10% bf16 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.sparseApply(base: base, packed, scales: weights, as: Float.self)) }
        }
        Benchmark("slerp f32 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.slerp(t: 0.3, base, models[0], as: Float.self)) }
        }
        Benchmark("model_stock f32 \(name)") { b in
            for _ in b.scaledIterations { blackHole(try ctx.modelStock(base: base, models, as: Float.self)) }
        }

        let gu = try! PackedExperts(ctx, weights: gateUp, experts: experts, n: 2 * inter, k: hidden)
        let dn = try! PackedExperts(ctx, weights: down, experts: experts, n: hidden, k: inter)
        for tokens in [1, 128] {
            let x = tensor(5, count: tokens * hidden)
            // token t picks experts t, t+1, ..., t+7 (mod 16), weights 1/8
            let ids = (0..<tokens * topK).map { Int32(($0 / topK + $0 % topK) % experts) }
            let rw = [Float](repeating: 1.0 / Float(topK), count: tokens * topK)
            Benchmark("moe_ffn qwen3 E\(experts) T\(tokens) f32 \(name)") { b in
                for _ in b.scaledIterations {
                    blackHole(try ctx.moeFFN(x: x, tokens: tokens, ids: ids, routeWeights: rw, k: topK, gateUp: gu, down: dn))
                }
            }
            Benchmark("grouped_matmul_gather qwen3 E\(experts) T\(tokens) f32 \(name)") { b in
                for _ in b.scaledIterations {
                    blackHole(try ctx.groupedMatmulGather(x: x, rows: tokens, ldx: hidden, ids: Array(ids.prefix(tokens)), weights: gu))
                }
            }
        }
    }
}
