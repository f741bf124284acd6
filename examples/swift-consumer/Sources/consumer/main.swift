import Meld

// TIES-merge two small task vectors into a base through the public Swift API.
let ctx = try Context()
let base: [Float] = (0..<1000).map { Float($0) * 1e-3 }
let a = base.enumerated().map { $0.element + ($0.offset % 3 == 0 ? 0.1 : -0.01) }
let b = base.enumerated().map { $0.element + ($0.offset % 5 == 0 ? -0.2 : 0.02) }
let merged: [Float] = try ctx.ties(base: base, [a, b], weights: [1, 1], densities: [0.5, 0.5])
let moved = zip(merged, base).filter { $0 != $1 }.count
print("consumer: Meld \(Version.string) on \(ctx.isa.name), \(ctx.threads) threads; TIES changed \(moved) of \(base.count) entries")
precondition(moved > 0 && moved < base.count)
