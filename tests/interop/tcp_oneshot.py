#_*_coding:utf-8_*_
__author__ = 'Linhaifeng'
import socket, sys
ip_port=('127.0.0.1',int(sys.argv[1]))
BUFSIZE=1024
s=socket.socket(socket.AF_INET,socket.SOCK_STREAM)
s.connect_ex(ip_port) #连接到地址
s.send('linhaifeng nb'.encode('utf-8')) #发消息,编码方式
feedback=s.recv(BUFSIZE) #收消息
print(feedback.decode('utf-8'))
s.close() #退出
