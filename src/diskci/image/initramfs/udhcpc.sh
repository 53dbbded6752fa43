#!/bin/sh
# udhcpc event script of the diskci init: configure the interface from the lease (busybox ip).
case $1 in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
	for r in $router; do
		ip route add default via "$r" dev "$interface" && break
	done
	: >/etc/resolv.conf
	for d in $dns; do
		echo "nameserver $d" >>/etc/resolv.conf
	done
	[ -z "$domain" ] || echo "search $domain" >>/etc/resolv.conf
	echo "$interface $ip/${mask:-24}${router:+ via $router}" >/run/diskci/net
	;;
esac
exit 0
