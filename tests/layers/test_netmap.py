"""The network settings rewriters on real-format files: ifupdown, NetworkManager keyfiles,
systemd-networkd, netplan and ifcfg, with the NIC map a migration builds from facts."""

from __future__ import annotations

from lamina.layers.netmap import MAX_SETTINGS, Nic, map_nics, nics, rewrite, same_model

OLD = [Nic("enp0s3", "52:54:00:00:00:01"), Nic("enp0s8", "52:54:00:00:00:02")]
NEW = [Nic("eno1", "aa:bb:cc:00:00:01"), Nic("eno2", "aa:bb:cc:00:00:02")]


def _m():  # type: ignore[no-untyped-def]
    return map_nics(OLD, NEW)


def test_map_by_mac_then_name_then_order() -> None:
    m = map_nics(
        [Nic("eth0", "11:11:11:11:11:11"), Nic("eth1", "22:22:22:22:22:22"), Nic("wlan0", "")],
        [Nic("wlan0", "33:33:33:33:33:33"), Nic("ens4", "22:22:22:22:22:22"), Nic("ens5", "")],
    )
    assert m.complete
    assert m.names == {"eth1": "ens4", "wlan0": "wlan0", "eth0": "ens5"}
    assert m.macs == {"22:22:22:22:22:22": "22:22:22:22:22:22"}
    assert [line.rsplit(": ", 1)[1] for line in m.lines] == ["in order", "same MAC", "same name"]


def test_a_nic_left_over_is_reported_and_the_map_incomplete() -> None:
    m = map_nics(OLD, NEW[:1])
    assert not m.complete and m.names == {"enp0s3": "eno1"}
    assert any(line.startswith("enp0s8") and "not mapped" in line for line in m.lines)
    assert not map_nics([], NEW).complete  # nothing known of the old machine


def test_ifupdown_names_macs_vlans_and_bonds() -> None:
    src = (
        "# The primary network interface: enp0s3\n"
        "auto enp0s3 enp0s3.100\n"
        "allow-hotplug enp0s8\n"
        "iface enp0s3 inet static\n"
        "    address 192.0.2.10/24\n"
        "    gateway 192.0.2.1\n"
        "    dns-nameservers 192.0.2.53\n"
        "    hwaddress ether 52:54:00:00:00:01\n"
        "    up ip route add 198.51.100.0/24 via 192.0.2.254 dev enp0s3\n"
        "iface enp0s3.100 inet dhcp\n"
        "iface bond0 inet manual\n"
        "    bond-slaves enp0s8 enp0s80\n"
    )
    path, out = rewrite("/etc/network/interfaces", src.encode(), _m()) or ("", b"")
    assert path == "/etc/network/interfaces"
    assert out.decode() == (
        "# The primary network interface: enp0s3\n"  # comments stay as written
        "auto eno1 eno1.100\n"
        "allow-hotplug eno2\n"
        "iface eno1 inet static\n"
        "    address 192.0.2.10/24\n"
        "    gateway 192.0.2.1\n"
        "    dns-nameservers 192.0.2.53\n"
        "    hwaddress ether aa:bb:cc:00:00:01\n"
        "    up ip route add 198.51.100.0/24 via 192.0.2.254 dev eno1\n"
        "iface eno1.100 inet dhcp\n"
        "iface bond0 inet manual\n"
        "    bond-slaves eno2 enp0s80\n"  # another name that merely starts alike is left
    )


def test_two_nics_that_swap_names_are_rewritten_in_one_pass() -> None:
    m = map_nics([Nic("eth0", "01:00:00:00:00:01"), Nic("eth1", "01:00:00:00:00:02")],
                 [Nic("eth1", "01:00:00:00:00:01"), Nic("eth0", "01:00:00:00:00:02")])  # fmt: skip
    _, out = rewrite("/etc/network/interfaces.d/lan", b"auto eth0 eth1\n", m) or ("", b"")
    assert out == b"auto eth1 eth0\n"


def test_networkmanager_keyfile() -> None:
    src = (
        "[connection]\n"
        "id=Office enp0s3\n"
        "uuid=9d1a3c5e-6f4b-4f1e-9a53-0d4c6e1f2a7b\n"
        "type=ethernet\n"
        "interface-name=enp0s3\n"
        "\n"
        "[ethernet]\n"
        "mac-address=52:54:00:00:00:01\n"
        "cloned-mac-address=02:00:00:00:00:99\n"
        "\n"
        "[ipv4]\n"
        "address1=192.0.2.10/24,192.0.2.1\n"
        "dns=192.0.2.53;\n"
        "method=manual\n"
        "route1=198.51.100.0/24,192.0.2.254\n"
    )
    path = "/etc/NetworkManager/system-connections/Office.nmconnection"
    new_path, out = rewrite(path, src.encode(), _m()) or ("", b"")
    assert new_path == path
    text = out.decode()
    assert "interface-name=eno1\n" in text and "mac-address=aa:bb:cc:00:00:01\n" in text
    assert "id=Office enp0s3\n" in text  # the connection's name is the user's
    assert "cloned-mac-address=02:00:00:00:00:99\n" in text
    assert "address1=192.0.2.10/24,192.0.2.1\n" in text and "route1=" in text
    upper = rewrite(path, b"[ethernet]\nmac-address=52:54:00:00:00:02\n".upper(), _m())
    assert upper is not None and upper[1] == b"[ETHERNET]\nMAC-ADDRESS=52:54:00:00:00:02\n"
    vlan = rewrite(path, b"[vlan]\nid=100\nparent=enp0s8\n", _m())
    assert vlan is not None and vlan[1] == b"[vlan]\nid=100\nparent=eno2\n"


def test_networkd_network_file() -> None:
    src = (
        "[Match]\n"
        "Name=enp0s3\n"
        "MACAddress=52:54:00:00:00:01\n"
        "\n"
        "[Network]\n"
        "Address=192.0.2.10/24\n"
        "Gateway=192.0.2.1\n"
        "DNS=192.0.2.53\n"
        "\n"
        "[Route]\n"
        "Destination=198.51.100.0/24\n"
        "Gateway=192.0.2.254\n"
    )
    _, out = rewrite("/etc/systemd/network/10-lan.network", src.encode(), _m()) or ("", b"")
    assert out.decode() == src.replace("Name=enp0s3", "Name=eno1").replace(
        "MACAddress=52:54:00:00:00:01", "MACAddress=aa:bb:cc:00:00:01"
    )
    glob = b"[Match]\nName=en*\n"
    assert (rewrite("/etc/systemd/network/99-dhcp.network", glob, _m()) or ("", b""))[1] == glob


def test_netplan() -> None:
    src = (
        "network:\n"
        "  version: 2\n"
        "  ethernets:\n"
        "    enp0s3:\n"
        "      match:\n"
        "        macaddress: 52:54:00:00:00:01\n"
        "      set-name: enp0s3\n"
        "      addresses: [192.0.2.10/24]\n"
        "      routes:\n"
        "        - to: default\n"
        "          via: 192.0.2.1\n"
        "      nameservers: {addresses: [192.0.2.53]}\n"
        "    enp0s8: {dhcp4: true}\n"
        "  bonds:\n"
        "    bond0:\n"
        "      interfaces: [enp0s8]\n"
    )
    _, out = rewrite("/etc/netplan/01-netcfg.yaml", src.encode(), _m()) or ("", b"")
    text = out.decode()
    assert "    eno1:\n" in text and "set-name: eno1\n" in text
    assert "macaddress: aa:bb:cc:00:00:01\n" in text
    assert "    eno2: {dhcp4: true}\n" in text and "interfaces: [eno2]\n" in text
    assert "enp0s" not in text and "via: 192.0.2.1\n" in text


def test_ifcfg_file_takes_the_new_name() -> None:
    src = b'DEVICE=enp0s3\nHWADDR="52:54:00:00:00:01"\nBOOTPROTO=none\nIPADDR=192.0.2.10\n'
    out = rewrite("/etc/sysconfig/network-scripts/ifcfg-enp0s3", src, _m())
    assert out == (
        "/etc/sysconfig/network-scripts/ifcfg-eno1",
        b'DEVICE=eno1\nHWADDR="aa:bb:cc:00:00:01"\nBOOTPROTO=none\nIPADDR=192.0.2.10\n',
    )


def test_hostile_files_are_left_alone() -> None:
    assert rewrite("/etc/network/interfaces", b"\xff\xfe auto enp0s3\n", _m()) is None
    assert rewrite("/etc/network/interfaces", b"a" * (MAX_SETTINGS + 1), _m()) is None
    assert rewrite("/etc/network/interfaces", b"auto enp0s3\0", _m()) is None
    assert rewrite("/etc/hosts", b"127.0.0.1 enp0s3\n", _m()) is None


# --- facts format 3: PCI path and driver ---------------------------------------------
def test_same_slot_on_the_same_model_maps_by_pci_path_before_name_and_order() -> None:
    # Two NICs on the same model of machine, new cards (new MACs), names differing and
    # listed in the other order: the slot decides, not the order or the name.
    old = [
        Nic("enp0s25", "52:54:00:00:00:01", "0000:00:19.0", "pci-0000:00:19.0", "e1000e"),
        Nic("enp3s0", "52:54:00:00:00:02", "0000:03:00.0", "pci-0000:03:00.0", "e1000e"),
    ]
    new = [
        Nic("eth0", "aa:bb:cc:00:00:02", "0000:03:00.0", "pci-0000:03:00.0", "e1000e"),
        Nic("enp0s25x", "aa:bb:cc:00:00:01", "0000:00:19.0", "pci-0000:00:19.0", "e1000e"),
    ]
    m = map_nics(old, new, one_model=True)
    assert m.names == {"enp0s25": "enp0s25x", "enp3s0": "eth0"}
    assert [r["rule"] for r in m.rows] == ["same PCI path", "same PCI path"]
    assert m.lines[0].endswith(": same PCI path")
    # Another model: the same address is another slot; the driver rule maps in order.
    m = map_nics(old, new, one_model=False)
    assert m.names == {"enp0s25": "eth0", "enp3s0": "enp0s25x"}
    assert [r["rule"] for r in m.rows] == ["same driver, in order"] * 2


def test_driver_in_order_comes_before_name() -> None:
    old = [Nic("eth0", "", driver="r8169"), Nic("wlan0", "", driver="iwlwifi")]
    new = [Nic("wlan0", "", driver="ath10k_pci"), Nic("enp2s0", "", driver="r8169"),
           Nic("wlp3s0", "", driver="iwlwifi")]  # fmt: skip
    m = map_nics(old, new)
    assert m.names == {"eth0": "enp2s0", "wlan0": "wlp3s0"}
    assert [(r["old"], r["rule"]) for r in m.rows] == [
        ("eth0", "same driver, in order"),
        ("wlan0", "same driver, in order"),
    ]


def test_mac_wins_over_pci_path_and_format_2_facts_still_map() -> None:
    old = [Nic("a", "11:11:11:11:11:11", path="pci-0000:00:19.0"), Nic("b", "", path="pci-x")]
    new = [Nic("c", "", path="pci-0000:00:19.0"), Nic("d", "11:11:11:11:11:11")]
    m = map_nics(old, new, one_model=True)
    assert m.names == {"a": "d", "b": "c"}
    assert [r["rule"] for r in m.rows] == ["same MAC", "in order"]
    # Facts from an older agent (format 2: name and MAC only) read with empty fields.
    facts = {"network": [{"name": "eth0", "mac": "AA:BB:CC:00:00:01"}, {"name": 3}, "junk"]}
    assert nics(facts) == [Nic("eth0", "aa:bb:cc:00:00:01")]
    hostile = {"network": [{"name": "eth0", "mac": 5, "path": ["x"], "driver": None}]}
    assert nics(hostile) == [Nic("eth0", "")]


def test_same_model_needs_both_fields_known_and_equal() -> None:
    dell = {"sys_vendor": "Dell Inc.", "product_name": "OptiPlex 7090"}
    assert same_model(dell, dict(dell))
    assert not same_model(dell, {**dell, "product_name": "OptiPlex 7080"})
    assert not same_model(
        {"sys_vendor": "", "product_name": ""}, {"sys_vendor": "", "product_name": ""}
    )
    assert not same_model(None, dell)
