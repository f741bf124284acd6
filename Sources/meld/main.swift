import Meld
print("meld \(Version.string)")
